"""Target networks: rho <- (1 - tau) rho + tau pi after every actor step (paper Alg. 1), and the
target critic, softly with the same rule or as a hard copy every N updates (PyMARL baselines)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` for every parameter; buffers are copied."""
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if tau == 1.0:
        torch._foreach_copy_(target_params, source_params)
    elif target_params:
        torch._foreach_lerp_(target_params, source_params, tau)
    for target_buffer, source_buffer in zip(target.buffers(), source.buffers()):
        target_buffer.copy_(source_buffer)


class TargetNetworkUpdate(pl.Callback):
    """After every training batch, move ``module.<target>`` towards ``module.<source>``.

    Exactly one of ``tau`` (soft update each batch, ``0 < tau <= 1``) and ``every_n_updates`` (hard
    copy every N batches) is given. Each training batch of every algorithm is one actor step, so the
    soft form is DMAC's target-policy rule.
    """

    def __init__(self, source: str, target: str, tau: float | None = None, every_n_updates: int | None = None) -> None:
        if (tau is None) == (every_n_updates is None):
            raise ValueError("TargetNetworkUpdate: give exactly one of tau and every_n_updates")
        if tau is not None and not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau!r}")
        if every_n_updates is not None and every_n_updates < 1:
            raise ValueError(f"every_n_updates must be >= 1, got {every_n_updates!r}")
        self.source, self.target = source, target
        self.tau, self.every_n_updates = tau, every_n_updates
        self.updates = 0

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.source}->{self.target}]"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.updates += 1
        target, source = getattr(pl_module, self.target), getattr(pl_module, self.source)
        if self.tau is not None:
            soft_update(target, source, self.tau)
        elif self.updates % self.every_n_updates == 0:
            soft_update(target, source, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]


def target_policy_update(tau: float) -> TargetNetworkUpdate:
    """DMAC's target policy: ``theta~ <- (1 - tau) theta~ + tau theta`` after every actor step."""
    return TargetNetworkUpdate("actor", "target_actor", tau=tau)
