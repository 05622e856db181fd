"""Stop a diverging run with one clear message, and never checkpoint its non-finite weights.

A run diverges when a loss, a gradient norm or a weight becomes NaN or infinite (too high a learning
rate, omega or reward scale). Checking every update would cost a host sync per update, so the checks
sit where the host looks anyway:

* at every metric flush (``trainer.log_every_n_steps`` updates; the logged means of the losses and
  ``grad_norm/*`` turn NaN as soon as one update in the interval did) and the weights there: a run stops
  at most ``log_every_n_steps`` updates after it diverged;
* before every checkpoint is written (``EnvStepCheckpoint``) and before every evaluation: so no checkpoint
  ever holds non-finite weights, and the last one on disk is the last finite state;
* when collecting fails because the policy's probabilities are NaN (``torch.multinomial`` refuses them).

``CrashCheckpoint`` writes nothing when the weights are not finite.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

# Settings that, set too high, make a run diverge: named in the message with their values where the algorithm has them.
USUAL_CAUSES = ("lr_critic", "lr_actor", "omega", "grad_clip_norm")


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient norm or weight."""


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of ``module``'s floating-point parameters and buffers holding a NaN or an inf (one host sync
    when all are finite, the common case)."""
    tensors = [(name, t) for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]
    if not tensors:
        return []
    finite = torch.stack([t.detach().isfinite().all() for _, t in tensors])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]


def non_finite_metrics(metrics: dict[str, float]) -> list[str]:
    return [name for name, value in metrics.items() if not math.isfinite(value)]


def divergence_message(
    algorithm: str,
    update: int,
    env_steps: int,
    metrics: Iterable[str] = (),
    tensors: Iterable[str] = (),
    settings: dict | None = None,
    last_checkpoint: str | None = None,
    since_update: int | None = None,
) -> str:
    """The one message a diverged run stops with: what, when, why it usually happens, what is kept."""
    metrics, tensors = list(metrics), list(tensors)
    what = []
    if metrics:
        what.append(f"{', '.join(metrics)} {'is' if len(metrics) == 1 else 'are'} NaN or infinite")
    if tensors:
        shown = ", ".join(tensors[:3]) + (f" and {len(tensors) - 3} more" if len(tensors) > 3 else "")
        what.append(f"{len(tensors)} weight tensor{'s' if len(tensors) > 1 else ''} ({shown}) hold NaN or inf")
    when = f"update {update}" if since_update is None or since_update >= update else f"updates {since_update + 1}-{update}"
    settings = settings or {}
    values = ", ".join(f"model.{name} {settings[name]:g}" for name in USUAL_CAUSES if isinstance(settings.get(name), (int, float)))
    kept = (
        f"the last checkpoint, {last_checkpoint}, holds the last finite weights (resume from it with --ckpt_path after changing the setting)"
        if last_checkpoint
        else "no checkpoint was written with these weights"
    )
    return (
        f"{algorithm} diverged at {when} (env step {env_steps}): {'; '.join(what) or 'a value is NaN or infinite'}. "
        f"Usual causes: a learning rate too high, omega too large, or rewards on too large a scale "
        f"(data.env_kwargs.reward_scale){f'; this run: {values}' if values else ''}. Training stopped; {kept}."
    )
