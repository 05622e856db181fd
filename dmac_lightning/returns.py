"""Return targets over padded episode batches (no regularisation here: see ``divergence``)."""

from __future__ import annotations

import torch


def lambda_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    next_values: torch.Tensor,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """TD(lambda) targets ``G_t = r_t + gamma (1 - term_t) ((1 - lambda) V_{t+1} + lambda G_{t+1})``.

    All inputs are ``[B, T, ...]`` (trailing dims broadcast, e.g. one target per agent):
    ``rewards`` and ``terminated`` of step t, ``filled`` whether step t is a real step of the episode,
    ``next_values`` the bootstrap value of the state after step t. At the last real step the recursion is
    cut: ``G_{t+1}`` is replaced by ``V_{t+1}`` (a one-step target; multiplied by zero when terminated,
    kept when the episode was truncated by a time limit). Entries past the episode end are garbage and
    must be masked by the caller.
    """
    rewards, terminated, filled, next_values = torch.broadcast_tensors(
        rewards, terminated.to(rewards.dtype), filled.to(torch.bool), next_values
    )
    returns = torch.zeros_like(next_values)
    steps = rewards.shape[1]
    following = next_values[:, steps - 1]
    for t in range(steps - 1, -1, -1):
        if t + 1 < steps:
            following = torch.where(
                filled[:, t + 1],
                (1 - td_lambda) * next_values[:, t] + td_lambda * returns[:, t + 1],
                next_values[:, t],
            )
        returns[:, t] = rewards[:, t] + gamma * (1 - terminated[:, t]) * following
    return returns


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true (broadcast), zero if none."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def tree_backup_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    next_expected_values: torch.Tensor,
    next_taken_values: torch.Tensor,
    next_traces: torch.Tensor,
    gamma: float,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Tree-backup targets (Precup et al., 2000), DOP's off-policy critic targets.

    ``G_t = r_t + gamma (1 - term_t) [V_{t+1} + c_{t+1} (G_{t+1} - Q_{t+1})]`` with
    ``V_{t+1} = E_pi Q(s_{t+1}, .)``, ``Q_{t+1} = Q(s_{t+1}, a_{t+1})`` at the stored action and the trace
    ``c_{t+1} = lambda pi(a_{t+1} | s_{t+1})``; no importance ratios, so it is unbiased off-policy.
    Equivalently ``G_t = Q_t + sum_n gamma^n (c_{t+1} ... c_{t+n}) delta_{t+n}`` over the expected-SARSA
    errors ``delta``; ``max_steps`` keeps the first ``max_steps`` terms of that sum (DOP's code: 5), None
    all of them. All inputs ``[B, T, ...]``; at the last real step the recursion is cut.
    """
    rewards, terminated, filled, expected, taken, traces = torch.broadcast_tensors(
        rewards, terminated.to(rewards.dtype), filled.to(torch.bool), next_expected_values, next_taken_values, next_traces
    )
    steps = rewards.shape[1]
    horizon = steps if max_steps is None else min(max_steps, steps)
    continues = gamma * (1 - terminated)
    one_step = rewards + continues * expected  # the 1-step (expected SARSA) target
    returns = one_step
    for _ in range(horizon - 1):  # each pass looks one step further ahead
        following = torch.zeros_like(returns)
        following[:, :-1] = torch.where(filled[:, 1:], traces[:, :-1] * (returns[:, 1:] - taken[:, :-1]), following[:, :-1])
        returns = one_step + continues * following
    return returns
