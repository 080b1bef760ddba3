"""Base class for every config section: typed, unknown keys rejected, validated on assignment.

No float setting accepts inf or nan (`train.lr=inf` would train to an all-NaN adapter and still exit 0)."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
