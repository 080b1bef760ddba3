"""`plan:` section — hardware assumptions for estimates, and how strict the pre-flight check is.

The class is defined in glmtune/config/sections.py (so config/schema.py does not import this stage).
"""

from glmtune.config.sections import PlanSection  # noqa: F401
