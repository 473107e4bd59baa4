"""The base of every recipe section: unknown keys are errors, values are immutable."""
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
