"""The one RunConfig that drives every command. See `schema.py` (sections) and `load.py` (YAML + overrides)."""

from glmtune.config.load import ConfigError, dump_config, load_config
from glmtune.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "dump_config", "ConfigError"]
