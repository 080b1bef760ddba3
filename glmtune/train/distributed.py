"""`distributed:` section — which existing engine runs many processes (never a home-made one).

Used only when `glmtune train --nproc N` (or torchrun) starts more than one process; see train/launch.py.
"""

from typing import Literal

from pydantic import Field, model_validator

from glmtune.config.base import Section


class DistributedSection(Section):
    backend: Literal["ddp", "deepspeed", "fsdp"] = Field(
        "ddp", description="Engine used when nproc > 1: ddp (whole model per device), deepspeed (ZeRO) or fsdp "
                           "(GPU only).")
    zero_stage: Literal[2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 2 shards optimizer state + gradients, 3 also the weights.")
    offload: bool = Field(False, description="DeepSpeed/FSDP: offload optimizer (and ZeRO-3/FSDP params) to CPU RAM.")
    deepspeed_config: str | None = Field(
        None, description="Your own DeepSpeed JSON (overrides zero_stage/offload); use \"auto\" for batch sizes, "
                          "precision and clipping so train.* stays the one place they are set.")

    @model_validator(mode="after")
    def _engine_options_match_backend(self):
        if self.deepspeed_config and self.backend != "deepspeed":
            raise ValueError(f"distributed.deepspeed_config is set but distributed.backend={self.backend}; "
                             "set distributed.backend=deepspeed to use it")
        if self.offload and self.backend == "ddp":
            raise ValueError("distributed.offload needs distributed.backend=deepspeed or fsdp (DDP keeps everything "
                             "on the device)")
        return self
