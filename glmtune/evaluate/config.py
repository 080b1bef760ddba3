"""`eval:` section — how predictions are generated and scored.

Metric definitions are versioned in code (`glmtune-text-1`, `glmtune-fields-1`, see metrics.py /
fields.py) rather than configurable, so two reports with the same spec are always comparable.

The class is defined in glmtune/config/sections.py (so config/schema.py does not import this stage).
"""

from glmtune.config.sections import GENERIC_METRICS, EvalSection  # noqa: F401
