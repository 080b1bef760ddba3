"""`export:` section — merge, shard, dtype, device, verification tolerance."""

from typing import Literal

from pydantic import Field, field_validator

from glmtune.config.base import Section


class ExportSection(Section):
    output_dir: str | None = Field(None, description="Export folder (default: <run>/export).")
    size: str = Field("2GB", description="Maximum shard size, e.g. 500MB, 2GB, 5GB.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="dtype of written weights.")
    device: str = Field("cpu", description="Device the merge runs on: cpu, cuda, cuda:1.")
    verify: bool = Field(True, description="Compare merged logits with base+adapter after writing.")
    tolerance: float | None = Field(
        None, gt=0, description="Largest allowed |Δlogit| between merged and adapter model; empty = by dtype "
        "(float32 1e-3; bfloat16 3% and float16 0.5% of the largest logit)."
    )

    @field_validator("size")
    @classmethod
    def _size_parses(cls, v: str) -> str:
        from glmtune.utils.shards import parse_size

        parse_size(v)
        return v
