"""Features of micrographs: pooling kernels, VLAD, the CNN texture featurizer."""
