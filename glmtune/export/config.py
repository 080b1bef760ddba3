"""`export:` section — merge, shard, dtype, device, verification tolerance.

The class is defined in glmtune/config/sections.py (so config/schema.py does not import this stage).
"""

from glmtune.config.sections import ExportSection  # noqa: F401
