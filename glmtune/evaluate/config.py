"""`eval:` section — how predictions are generated and scored."""

from typing import Literal

from pydantic import Field

from glmtune.config.base import Section


class EvalSection(Section):
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per answer.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding (reproducible).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling when temperature > 0.")
    metrics: list[Literal["text", "fields", "oral"]] = Field(
        default_factory=lambda: ["text", "fields"], description="Metric families written to the report."
    )
    field_spec: str | None = Field(
        "oral", description="Structured-answer spec for 'fields' metrics: 'oral' or a YAML file path."
    )
    forgetting: bool = Field(False, description="Run the bundled general-ability set on base and tuned models.")
