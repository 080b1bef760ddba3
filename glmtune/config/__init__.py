"""The one RunConfig that drives every command. See `schema.py` (sections) and `load.py` (YAML + overrides).

Names are resolved lazily: section modules elsewhere import `glmtune.config.base`, and an eager import of
the schema here would make those imports circular.
"""

__all__ = ["RunConfig", "load_config", "dump_config", "ConfigError"]


def __getattr__(name: str):
    if name == "RunConfig":
        from glmtune.config.schema import RunConfig

        return RunConfig
    if name in ("load_config", "dump_config", "ConfigError"):
        from glmtune.config import load

        return getattr(load, name)
    raise AttributeError(name)
