"""Direction construction methods; each returns a :class:`BuildResult` (vector + stats)."""

from __future__ import annotations

from steerlab.directions.base import BuildResult, LayerStats
from steerlab.directions.contrast import contrast, single
from steerlab.directions.forced_prefix import forced_prefix
from steerlab.directions.labeled import labeled
from steerlab.directions.outcome import outcome_conditioned
from steerlab.directions.pca import SIGN_RULES, pca
from steerlab.directions.sae import sae
from steerlab.engine.record import Recording, record

METHODS = ("contrast", "single", "forced-prefix", "labeled", "pca")

__all__ = [
    "METHODS",
    "SIGN_RULES",
    "BuildResult",
    "LayerStats",
    "Recording",
    "contrast",
    "forced_prefix",
    "labeled",
    "outcome_conditioned",
    "pca",
    "record",
    "sae",
    "single",
]
