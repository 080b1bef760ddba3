"""Fine-tuning methods as registered strategies. Adding a method = adding one module imported here.

`MethodConfig` is the discriminated union of every registered method's config on `method.name`.
"""

from typing import Annotated, Union

from pydantic import Field

from glmtune.methods import lora  # noqa: F401  (registers)
from glmtune.methods.base import REGISTRY, Method, get, register, trainable_summary

for _optional in ("full", "freeze", "qlora", "ptuning"):
    # Each of these modules registers itself; they are optional only while being written.
    import importlib.util as _u

    if _u.find_spec(f"glmtune.methods.{_optional}") is not None:
        __import__(f"glmtune.methods.{_optional}")

MethodConfig = Annotated[
    Union[tuple(m.config_cls for m in REGISTRY.values())],  # type: ignore[misc]
    Field(discriminator="name"),
]

__all__ = ["Method", "MethodConfig", "REGISTRY", "get", "register", "trainable_summary"]
