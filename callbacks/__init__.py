"""Lightning callbacks: target networks, evaluation, progress."""

from callbacks.evaluation import Evaluation
from callbacks.progress import RLProgressBar
from callbacks.target_update import TargetNetworkUpdate, soft_update, target_policy_update

__all__ = ["Evaluation", "RLProgressBar", "TargetNetworkUpdate", "soft_update", "target_policy_update"]
