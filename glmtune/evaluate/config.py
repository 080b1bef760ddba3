"""`eval:` section — how predictions are generated and scored.

Metric definitions are versioned in code (`glmtune-text-1`, `glmtune-fields-1`, see metrics.py /
fields.py) rather than configurable, so two reports with the same spec are always comparable.
"""

from pydantic import Field, field_validator

from glmtune.config.base import Section

GENERIC_METRICS = ("text", "fields")


def _default_field_spec() -> str | None:
    from glmtune.tasks import default_field_spec

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
        from glmtune.tasks import task_metrics

        known = [*GENERIC_METRICS, *task_metrics()]
        bad = [m for m in value if m not in known]
        if bad:
            raise ValueError(f"unknown metric famil{'y' if len(bad) == 1 else 'ies'} {bad}; one of {known}")
        return value
