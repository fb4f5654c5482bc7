"""steerlab: build linear steering directions, apply them during batched generation, measure them."""

from __future__ import annotations

__version__ = "0.1.0"
