"""Target networks: rho <- (1 - tau) rho + tau pi after every actor step (paper Alg. 1), and target
critics, softly with the same rule or as a hard copy every N updates or N episodes (baselines).

The rule is a Lightning callback that an algorithm returns from ``configure_callbacks``; it lives in
the library, beside the algorithms that choose it.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from dmac_lightning.validation import check_positive_int, check_range


def ran_an_update(outputs: Any) -> bool:
    """Whether a training batch updated the module. With the ``dataloader_iter`` step flavour, Lightning
    ends every epoch with one more batch (and its batch-end hooks) in which the iterator ran out and
    nothing was trained: batch-end logic that counts updates must skip it."""
    return isinstance(outputs, Mapping) and bool(outputs.get("updated", False))


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
    """After every training batch (one update), move ``module.<target>`` towards ``module.<source>``.

    Exactly one of: ``tau`` (soft update after each update, ``0 < tau <= 1``), ``every_n_updates``
    (hard copy every N updates), ``every_n_episodes`` (hard copy once N more episodes were collected,
    counted over all ranks, as PyMARL's QMIX and FOP do) or ``every_n_critic_steps`` (hard copy once
    the critic took N more optimiser steps, as PyMARL's COMA, DOP and the authors' DMAC count, whose
    critics take one step per timestep of a batch).
    """

    def __init__(
        self,
        source: str,
        target: str,
        tau: float | None = None,
        every_n_updates: int | None = None,
        every_n_episodes: int | None = None,
        every_n_critic_steps: int | None = None,
    ) -> None:
        rules = {"every_n_updates": every_n_updates, "every_n_episodes": every_n_episodes, "every_n_critic_steps": every_n_critic_steps}
        if sum(x is not None for x in (tau, *rules.values())) != 1:
            raise ValueError(f"TargetNetworkUpdate: give exactly one of tau, {', '.join(rules)}")
        if tau is not None:
            check_range("tau", tau, 0, 1, low_open=True)
        for name, every in rules.items():
            if every is not None:
                check_positive_int(name, every)
        self.source, self.target = source, target
        self.tau, self.every_n_updates = tau, every_n_updates
        # A hard copy by a counter the module keeps: collected episodes or critic optimiser steps.
        self.counter, self.every = None, None
        for counter, every in (("episodes", every_n_episodes), ("critic_steps", every_n_critic_steps)):
            if every is not None:
                self.counter, self.every = counter, every
        self.updates = 0
        self.copied_at = 0

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.source}->{self.target}]"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not ran_an_update(outputs):
            return
        self.updates += 1
        target, source = getattr(pl_module, self.target), getattr(pl_module, self.source)
        if self.tau is not None:
            soft_update(target, source, self.tau)
        elif self.every_n_updates is not None:
            if self.updates % self.every_n_updates == 0:
                soft_update(target, source, 1.0)
        elif (count := getattr(pl_module, self.counter)) - self.copied_at >= self.every:
            soft_update(target, source, 1.0)
            self.copied_at = count

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "copied_at": self.copied_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]
        self.copied_at = state_dict.get("copied_at", state_dict.get("copied_at_episode", 0))


def target_policy_update(tau: float) -> TargetNetworkUpdate:
    """DMAC's target policy: ``theta~ <- (1 - tau) theta~ + tau theta`` after every actor step."""
    return TargetNetworkUpdate("actor", "target_actor", tau=tau)


def soft_target_updates(tau: float, *networks: str) -> list[TargetNetworkUpdate]:
    """Each ``x`` in ``networks`` soft-updates ``target_x`` with rate ``tau`` after every update."""
    return [TargetNetworkUpdate(name, f"target_{name}", tau=tau) for name in networks]


def hard_target_updates(*networks: str, **every: int) -> list[TargetNetworkUpdate]:
    """Copy each ``x`` in ``networks`` into ``target_x`` by one rule ``every_n_updates``,
    ``every_n_episodes`` or ``every_n_critic_steps`` (the baselines' hard target copies)."""
    return [TargetNetworkUpdate(name, f"target_{name}", **every) for name in networks]


def freeze(network: nn.Module) -> nn.Module:
    """A target network: no gradients, never in an optimiser."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
