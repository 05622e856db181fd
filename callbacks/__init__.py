"""Lightning callbacks: evaluation, progress, crash checkpoint; the target-network rule (from the library)."""

from callbacks.evaluation import Evaluation
from callbacks.progress import RLProgressBar
from dmac_lightning.targets import TargetNetworkUpdate, soft_update, target_policy_update

__all__ = ["Evaluation", "RLProgressBar", "TargetNetworkUpdate", "soft_update", "target_policy_update"]
