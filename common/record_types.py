"""The building blocks of every typed record (common/records.py, and the records a strategy module adds): strict
JSON, and the ranges a measured value must fall in to be read back."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def strict_json(value: Any) -> Any:
    """NaN and infinities as null: strict JSON readers refuse them. Records flag where they were."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _null_as_nan(value: Any) -> Any:
    return math.nan if value is None else value


# A float that may have been written as null because it was not finite (a diverged loss): read back as NaN.
Real = Annotated[float, BeforeValidator(_null_as_nan)]
# What a finished run always measures: at least one (processes, devices, steps, ...), more than zero (rates, times),
# a share (overlap). A record outside these ranges is refused when read back.
Count = Annotated[int, Field(ge=1)]
Bytes = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict:
        """The record as strict JSON data (non-finite numbers as null)."""
        return strict_json(self.model_dump(mode="json"))
