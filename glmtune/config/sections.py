"""The sections of RunConfig owned by the later stages (eval, export, serve, plan, distributed).

They sit here, in config/, so config/schema.py assembles RunConfig without importing the stages (which import
config); each stage's old module re-exports its section (`from glmtune.serve.config import ServeSection` works).
Metric definitions are versioned in code (`glmtune-text-1`, `glmtune-fields-1`, see evaluate/metrics.py and
evaluate/fields.py) rather than configurable, so two reports with the same spec are always comparable.
Distributed training (train/launch.py) uses `distributed:` only when `glmtune train --nproc N` (or torchrun)
starts more than one process, and always through an existing engine (never a home-made one).
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from glmtune.config.base import Section


# ------------------------------------- `eval:` section — how predictions are generated and scored.
GENERIC_METRICS = ("text", "fields")


def _default_field_spec() -> str | None:
    from glmtune.registry import default_field_spec

    return default_field_spec()


class EvalSection(Section):
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per answer.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (requests in flight for an endpoint).")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding (reproducible).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling when temperature > 0.")
    metrics: list[str] = Field(
        default_factory=lambda: list(GENERIC_METRICS),
        description="Metric families written to the report: text, fields, or one a task registers (glmtune.tasks).",
    )
    field_spec: str | None = Field(
        default_factory=_default_field_spec,
        description="Structured-answer spec for 'fields' metrics: a built-in spec a task registers (the default "
        "task's by default) or a YAML file path.",
    )
    forgetting: bool = Field(False, description="Run the bundled general-ability set on base and tuned models.")
    forgetting_set: str | None = Field(
        None, description="JSONL of {id, prompt, accept} for the forgetting check; empty = the bundled 30 prompts."
    )
    forgetting_max_new_tokens: int = Field(64, ge=1, description="Tokens generated per forgetting-check answer.")
    out_dir: str | None = Field(
        None, description="Report folder; empty = <run>/eval for a run, else eval/<model name>."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's API key (keys stay out of configs)."
    )
    request_timeout: float = Field(600.0, gt=0, description="Seconds to wait for one endpoint request.")
    during_training_every: int = Field(
        0, ge=0, description="Generate on validation prompts every N training steps and log format validity "
        "and field exact match (0 = off)."
    )
    during_training_samples: int = Field(8, ge=1, description="Validation conversations generated each time.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from glmtune.registry import task_metrics

        known = [*GENERIC_METRICS, *task_metrics()]
        bad = [m for m in value if m not in known]
        if bad:
            raise ValueError(f"unknown metric famil{'y' if len(bad) == 1 else 'ies'} {bad}; one of {known}")
        return value


# ------------------------ `export:` section — merge, shard, dtype, device, verification tolerance.
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


# --- `plan:` section — hardware assumptions for estimates, and how strict the pre-flight check is.
class PlanSection(Section):
    gpu: str | None = Field(None, description="GPU name for memory/time estimates, e.g. RTX4090-24GB, A100-80GB.")
    gpu_mem_gb: float | None = Field(None, gt=0, description="GPU memory in GB (overrides gpu).")
    tokens_per_second: float | None = Field(None, gt=0, description="Stated training throughput for time estimates.")
    strict: bool = Field(True, description="train stops on fatal plan findings (e.g. every sample truncated).")
    world_size: int = Field(1, ge=1, description="GPUs (data-parallel processes) the run will use, for steps per epoch.")
    mfu: float = Field(0.35, gt=0, le=1, description="Model FLOPs utilisation assumed for a named GPU's time estimate.")


# ---------------------------------------- `serve:` section — bind address, limits, batching, auth.
class ServeSection(Section):
    host: str = Field("127.0.0.1", description="Bind address (127.0.0.1 unless you mean to expose it).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key: str | None = Field(None, description="If set, requests need 'Authorization: Bearer <key>'.")
    max_batch_size: int = Field(16, ge=1, description="Requests decoded together by the batching engine.")
    max_queue: int = Field(64, ge=1, description="Waiting requests beyond this get HTTP 429.")
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="HTTP requests handled at once (waiting, generating or streaming); more get a JSON "
        "503 with Retry-After. Default: max_queue + max_batch_size + 16.")
    max_new_tokens: int = Field(512, ge=1, description="Upper bound on max_tokens per request.")
    max_prompt_tokens: int = Field(8192, ge=1, description="Longer prompts get HTTP 400.")
    prefix_cache_tokens: int = Field(32768, ge=0, description="KV of prompt prefixes up to the last message boundary "
                                     "(system prompt, earlier turns) kept for reuse, in tokens; 0 turns it off.")
    request_timeout_s: float = Field(120.0, gt=0, description="Requests running longer are cut (finish_reason=timeout).")
    threads: int | None = Field(None, ge=1, description="torch threads of the engine (intra-op). Default: "
                                "$OMP_NUM_THREADS if set, else the physical cores.")
    packed_linear: bool = Field(False, description="CPU float32 models: pack every Linear weight once for oneDNN "
                                "(replacing the unpacked copy) instead of MKL on the unpacked weight at each step; "
                                "decode steps of batch 4-16 about 1.2x faster on SmolLM2-135M, logits differ in the last bits. "
                                "Weights tied to another parameter (embeddings) are left as they are.")
    adapt_threads: bool = Field(True, description="While other jobs keep cores busy, the engine uses fewer of its "
                                "threads (at least 1), checked every second: an OpenMP thread sharing a core with "
                                "another job makes every op wait for it.")
    engine_process: bool = Field(True, description="Run the batching engine in a process of its own, apart from the "
                                 "HTTP server (no GIL shared between them); false: one process, two threads.")
    adapters: dict[str, str] = Field(default_factory=dict, description="Named LoRA adapters: {name: run or adapter folder}.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (none by default).")
    vllm_python: str | None = Field(None, description="--backend vllm: python of vLLM's environment "
                                    "(default: .venv-vllm next to the project, made by `make vllm`; "
                                    "$GLMTUNE_VLLM_PYTHON wins).")
    vllm_args: list[str] = Field(default_factory=list, description="--backend vllm: extra arguments for vLLM's "
                                 "server, e.g. ['--kv-cache-memory-bytes', '2G'].")


# ----- `distributed:` section — which existing engine runs many processes (never a home-made one).
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
