"""Fine-tuning methods as registered strategies. Adding a method = adding one module imported here
(or, for a method outside the package, importing a module that `@register`s it before the config is read).

`glmtune.config.schema.RunConfig` validates the `method` section with the config class of the method its
`name` picks from `REGISTRY` (the dict kept in glmtune/registry.py, which config reads without importing this
package), so a method registered at runtime is accepted like the built-in ones.
"""

from glmtune.methods import freeze, full, lora, ptuning, qlora  # noqa: F401  (each registers itself)
from glmtune.methods.base import (REGISTRY, Method, by_footprint, default_name, get, label, register,
                                  trainable_summary, unregister)

__all__ = ["Method", "REGISTRY", "by_footprint", "default_name", "get", "label", "register", "trainable_summary",
           "unregister"]
