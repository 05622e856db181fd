"""Categorical policies over *available* actions, and action selection for collection."""

from __future__ import annotations

import torch

# Unavailable actions get this logit: their probability underflows to exactly 0 and, unlike -inf,
# ``0 * logit`` stays 0, so entropies and KLs need no special cases.
UNAVAILABLE_LOGIT = -1e10


def masked_log_softmax(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the available actions (``available`` is a bool mask of the same shape)."""
    return torch.log_softmax(logits.masked_fill(~available, UNAVAILABLE_LOGIT), dim=-1)


def epsilon_mixed_log_probs(log_probs: torch.Tensor, available: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``log((1 - eps) pi + eps * uniform(available))``: COMA's epsilon-bounded softmax."""
    if epsilon <= 0:
        return log_probs
    uniform = available.to(log_probs.dtype) / available.sum(-1, keepdim=True).clamp(min=1)
    mixed = (1 - epsilon) * log_probs.exp() + epsilon * uniform
    return torch.log(mixed.clamp(min=1e-30)).masked_fill(~available, UNAVAILABLE_LOGIT)


def sample(log_probs: torch.Tensor) -> torch.Tensor:
    """One action per row, drawn from ``exp(log_probs)``."""
    flat = log_probs.reshape(-1, log_probs.shape[-1]).exp()
    return torch.multinomial(flat, 1).view(log_probs.shape[:-1])


def greedy(scores: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """The best available action per row (for probabilities, log-probabilities or Q-values)."""
    return scores.masked_fill(~available, float("-inf")).argmax(-1)


def epsilon_greedy(q_values: torch.Tensor, available: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Greedy with probability ``1 - epsilon``, else uniform over the available actions (QMIX)."""
    best = greedy(q_values, available)
    if epsilon <= 0:
        return best
    uniform_log_probs = torch.log(available.to(q_values.dtype)).masked_fill(~available, UNAVAILABLE_LOGIT)
    random_actions = sample(uniform_log_probs)
    explore = torch.rand(best.shape, device=best.device) < epsilon
    return torch.where(explore, random_actions, best)


def gather_actions(values: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``values [..., A]`` at ``actions [...]`` -> ``[...]``."""
    return values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def linear_schedule(start: float, finish: float, duration: int, step: int) -> float:
    """Linear interpolation from ``start`` to ``finish`` over ``duration`` steps, then constant."""
    if duration <= 0:
        return finish
    fraction = min(max(step, 0) / duration, 1.0)
    return start + fraction * (finish - start)
