"""steerlab: build linear steering directions, steer batched generation, measure the effects."""

from __future__ import annotations

__version__ = "0.1.0"
