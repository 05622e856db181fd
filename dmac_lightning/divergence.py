"""The divergence-regularisation math of DMAC (paper Sec. 4.4-4.6, App. A.9), in one place.

Every +DMAC algorithm calls these functions; nothing else in the code base knows the formulas.
Notation: ``pi`` the current policies, ``rho`` the target policies, ``omega >= 0`` the coefficient.
All per-agent tensors carry the agent dimension last but one (``[..., n_agents, n_actions]``) or last
(``[..., n_agents]``) and all log-probabilities are over available actions (see ``policy``).
"""

from __future__ import annotations

import torch

from dmac_lightning.returns import lambda_returns


def log_ratio(log_pi_taken: torch.Tensor, log_rho_taken: torch.Tensor) -> torch.Tensor:
    """Per-agent ``log pi_i(a_i) - log rho_i(a_i)``."""
    return log_pi_taken - log_rho_taken


def joint_log_ratio(log_pi_taken: torch.Tensor, log_rho_taken: torch.Tensor) -> torch.Tensor:
    """``l = sum_i [log pi_i(a_i) - log rho_i(a_i)] = log pi(a) / rho(a)`` for the joint action."""
    return log_ratio(log_pi_taken, log_rho_taken).sum(-1)


def kl_divergence(log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
    """``KL(pi_i || rho_i)`` over the last (action) dimension."""
    return (log_pi.exp() * (log_pi - log_rho)).sum(-1)


def regularized_rewards(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_joint_log_ratio: torch.Tensor,
    gamma: float,
    omega: float,
) -> torch.Tensor:
    """``r_hat_t = r_t - gamma (1 - term_t) omega l_{t+1}``: the divergence term folded into the reward."""
    return rewards - gamma * (1 - terminated.to(rewards.dtype)) * omega * next_joint_log_ratio


def critic_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    next_values: torch.Tensor,
    next_joint_log_ratio: torch.Tensor,
    gamma: float,
    omega: float,
    td_lambda: float = 0.0,
) -> torch.Tensor:
    """Divergence-regularised TD(lambda) critic targets (Sec. 4.4, Prop. 4).

    With ``td_lambda = 0``: ``y_t = r_t + gamma (1 - term_t) (Qbar(s_{t+1}, a_{t+1}) - omega l_{t+1})``
    where ``a_{t+1}`` is any action (the stored one where the episode continues). TD(lambda) is the
    same recursion on ``r_hat_t`` (see ``regularized_rewards``), cut at the episode end.
    """
    shaped = regularized_rewards(rewards, terminated, next_joint_log_ratio, gamma, omega)
    return lambda_returns(shaped, terminated, filled, next_values, gamma, td_lambda)


def divergence_penalty(log_pi_taken: torch.Tensor, log_rho_taken: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """Agent i's share of the regulariser after the counterfactual baseline:
    ``log pi_i(a_i)/rho_i(a_i) - KL(pi_i || rho_i)`` (the other agents' terms and the constant
    ``-omega`` of App. A.9 do not depend on ``a_i`` and cancel against the baseline)."""
    return log_ratio(log_pi_taken, log_rho_taken) - kl


def counterfactual_baseline(q_alternatives: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """COMA's baseline ``sum_{a'_i} pi_i(a'_i) Q(s, (a'_i, a_-i))`` per agent."""
    return (pi * q_alternatives).sum(-1)


def counterfactual_advantage(
    q_taken: torch.Tensor,
    q_alternatives: torch.Tensor,
    pi: torch.Tensor,
    log_pi_taken: torch.Tensor,
    log_rho_taken: torch.Tensor,
    kl: torch.Tensor,
    omega: float,
) -> torch.Tensor:
    """Per-agent actor advantage with the counterfactual baseline (Sec. 4.5).

    ``A_i = Q(s,a) - sum_{a'_i} pi_i(a'_i) Q(s,(a'_i,a_-i)) - omega (log pi_i(a_i)/rho_i(a_i) - KL_i)``.
    ``q_taken [..., n]``, ``q_alternatives [..., n, A]`` (row i: agent i's action varied), ``pi [..., n, A]``.
    With ``omega = 0`` it is COMA's advantage.
    """
    return q_taken - counterfactual_baseline(q_alternatives, pi) - omega * divergence_penalty(log_pi_taken, log_rho_taken, kl)


def _taken(values: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def counterfactual_advantage_at(
    q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor, omega: float
) -> torch.Tensor:
    """:func:`counterfactual_advantage` for ``actions [..., n]`` from whole rows ``[..., n, A]`` of
    ``Q(s, (., a_-i))``, ``log pi`` and ``log rho``."""
    return counterfactual_advantage(
        _taken(q_alternatives, actions), q_alternatives, log_pi.exp(), _taken(log_pi, actions),
        _taken(log_rho, actions), kl_divergence(log_pi, log_rho), omega,
    )


def lvd_advantage_at(
    k: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor, omega: float
) -> torch.Tensor:
    """:func:`lvd_advantage` for ``actions [..., n]`` from individual ``Q_i(s, .)`` rows ``[..., n, A]``."""
    return lvd_advantage(
        k, _taken(q_values, actions), q_values, log_pi.exp(), _taken(log_pi, actions), _taken(log_rho, actions),
        kl_divergence(log_pi, log_rho), omega,
    )


def lvd_advantage(
    k: torch.Tensor,
    q_taken: torch.Tensor,
    q_alternatives: torch.Tensor,
    pi: torch.Tensor,
    log_pi_taken: torch.Tensor,
    log_rho_taken: torch.Tensor,
    kl: torch.Tensor,
    omega: float,
) -> torch.Tensor:
    """Per-agent advantage under linear value decomposition ``Q = sum_i k_i(s) Q_i(s,a_i) + b(s)`` (DOP).

    ``A_i = k_i(s) (Q_i(s,a_i) - sum_{a'} pi_i(a') Q_i(s,a')) - omega (log pi_i(a_i)/rho_i(a_i) - KL_i)``.
    ``k``, ``q_taken [..., n]``; ``q_alternatives``, ``pi [..., n, A]``.
    """
    individual = q_taken - counterfactual_baseline(q_alternatives, pi)
    return k * individual - omega * divergence_penalty(log_pi_taken, log_rho_taken, kl)


def soft_value(q_values: torch.Tensor, temperature: float, log_rho: torch.Tensor | None = None) -> torch.Tensor:
    """``V = temperature * log sum_a rho(a) exp(Q(a) / temperature)`` over the last dimension.

    The value of the regularised optimum ``pi* ∝ rho exp(Q / omega)`` (App. A.8, eq. 22). Without
    ``rho`` it is the entropy-regularised value ``alpha * logsumexp(Q / alpha)`` that FOP uses; with
    ``rho`` and ``omega`` it is FOP+DMAC's divergence-regularised value.
    """
    scaled = q_values / temperature
    if log_rho is not None:
        scaled = scaled + log_rho
    return temperature * torch.logsumexp(scaled, dim=-1)


def expected_regularized_loss(
    log_pi: torch.Tensor, q_values: torch.Tensor, omega: float, log_rho: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``mean_{i,t} sum_a pi_i(a) (omega log(pi_i(a)/rho_i(a)) - Q_i(a))``: the per-agent actor loss in
    exact expectation over actions (FOP+DMAC; FOP's ``alpha log pi_i`` replaced by ``omega log pi_i/rho_i``)."""
    per_agent = (log_pi.exp() * (omega * (log_pi - log_rho) - q_values)).sum(-1)
    weights = mask.to(per_agent.dtype).expand_as(per_agent)
    return (per_agent * weights).sum() / weights.sum().clamp(min=1)


def policy_gradient_loss(advantage: torch.Tensor, log_pi_taken: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-mean_{i,t}[stopgrad(A_i) log pi_i(a_i)]`` over the agent-steps where ``mask`` is true."""
    weights = mask.to(log_pi_taken.dtype).expand_as(log_pi_taken)
    return -(advantage.detach() * log_pi_taken * weights).sum() / weights.sum().clamp(min=1)
