from microtex.bundle import load_bundle as load_bundle
from microtex.bundle import open_bundle as open_bundle
from microtex.demo import run_demo as run_demo
from microtex.errors import MicrotexError as MicrotexError
from microtex.features.api import featurize as featurize
from microtex.features.texture import TextureFeaturizer as TextureFeaturizer
from microtex.io.read import iter_images as iter_images
from microtex.io.read import read_image as read_image
from microtex.io.read import read_images as read_images
from microtex.io.table import FeatureTable as FeatureTable
from microtex.synth import marble_dataset as marble_dataset
from microtex.synth import perlin_texture as perlin_texture

__version__: str
__all__: list[str]
