"""`plan:` section — hardware assumptions for estimates, and how strict the pre-flight check is."""

from pydantic import Field

from glmtune.config.base import Section


class PlanSection(Section):
    gpu: str | None = Field(None, description="GPU name for memory/time estimates, e.g. RTX4090-24GB, A100-80GB.")
    gpu_mem_gb: float | None = Field(None, gt=0, description="GPU memory in GB (overrides gpu).")
    tokens_per_second: float | None = Field(None, gt=0, description="Stated training throughput for time estimates.")
    strict: bool = Field(True, description="train stops on fatal plan findings (e.g. every sample truncated).")
    world_size: int = Field(1, ge=1, description="GPUs (data-parallel processes) the run will use, for steps per epoch.")
    mfu: float = Field(0.35, gt=0, le=1, description="Model FLOPs utilisation assumed for a named GPU's time estimate.")
