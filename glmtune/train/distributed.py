"""`distributed:` section — which existing engine runs many processes (never a home-made one).

Used only when `glmtune train --nproc N` (or torchrun) starts more than one process; see train/launch.py.

The class is defined in glmtune/config/sections.py (so config/schema.py does not import this stage).
"""

from glmtune.config.sections import DistributedSection  # noqa: F401
