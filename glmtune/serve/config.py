"""`serve:` section — bind address, limits, batching, auth.

The class is defined in glmtune/config/sections.py (so config/schema.py does not import this stage).
"""

from glmtune.config.sections import ServeSection  # noqa: F401
