"""`distributed:` section — which existing engine runs many processes (never a home-made one)."""

from typing import Literal

from pydantic import Field

from glmtune.config.base import Section


class DistributedSection(Section):
    backend: Literal["ddp", "deepspeed", "fsdp"] = Field("ddp", description="Engine used when nproc > 1.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload: bool = Field(False, description="DeepSpeed: offload optimizer (and ZeRO-3 params) to CPU.")
    deepspeed_config: str | None = Field(None, description="Your own DeepSpeed JSON (overrides zero_stage/offload).")
