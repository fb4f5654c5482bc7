"""The strict pydantic base every config and task schema builds on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors; values are frozen; inf / nan are never a sensible setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
