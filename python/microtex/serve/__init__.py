"""Serving bundles to production lines (issue 15, in progress): the micro-batcher so far."""
