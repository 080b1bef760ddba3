"""The training loss lives in glmtune/models/loss.py (below plan and train, which both run it); this name stays."""

from glmtune.models.loss import (IGNORE, can_split_head, causal_lm_loss_sum, chunked_head_loss,  # noqa: F401
                                 plain_loss_sum, supervised_targets)
