"""`plan:` section — hardware assumptions for estimates."""

from pydantic import Field

from glmtune.config.base import Section


class PlanSection(Section):
    gpu: str | None = Field(None, description="GPU name for memory/time estimates, e.g. RTX4090-24GB, A100-80GB.")
    gpu_mem_gb: float | None = Field(None, gt=0, description="GPU memory in GB (overrides gpu).")
    tokens_per_second: float | None = Field(None, gt=0, description="Stated training throughput for time estimates.")
    strict: bool = Field(True, description="train stops on fatal plan findings (e.g. every sample truncated).")
