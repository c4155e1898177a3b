"""Featurization beyond one machine: Ray Data workers that load bundles (:mod:`.ray`).

Nothing here imports Ray until a function runs; it needs the ``ray`` extra
(``pip install 'microtex[ray]'``).
"""

from __future__ import annotations

from microtex.distributed.ray import featurize_ray

__all__ = ["featurize_ray"]
