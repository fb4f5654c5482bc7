"""Sparse autoencoders: loading (sae-lens directories and releases, Gemma Scope) and the SAE value.

Steering with a feature: ``steerlab.directions.sae(sae, feature)`` gives its decoder row as a
vector (use it with ``add``); ``Intervention(v, layer, kind="sae_clamp", alpha=t, sae=sae)`` sets
its activation to ``t`` and keeps the SAE's reconstruction error. sae-lens (the ``sae`` extra) is
only needed for published releases.
"""

from __future__ import annotations

from steerlab.sae.load import (
    from_pretrained,
    from_sae_lens,
    load_gemma_scope,
    load_sae,
    load_sae_lens_dir,
)
from steerlab.sae.model import ARCHITECTURES, SAEError, SparseAutoencoder, site_from_hook

__all__ = [
    "ARCHITECTURES",
    "SAEError",
    "SparseAutoencoder",
    "from_pretrained",
    "from_sae_lens",
    "load_gemma_scope",
    "load_sae",
    "load_sae_lens_dir",
    "site_from_hook",
]
