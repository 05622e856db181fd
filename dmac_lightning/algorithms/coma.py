"""COMA (Foerster et al., 2018) and COMA+DMAC (paper App. C.1).

COMA: on-policy. A centralised critic ``Q(s, a_-i, .)`` (MLP 3x128) learns TD(lambda) targets,
computed once per batch from a target critic, with one optimiser step per timestep in reverse time
order (PyMARL); the target critic is copied every ``target_update_interval`` such critic steps. Each
actor follows the counterfactual advantage ``Q(s, a) - sum_{a'_i} pi_i(a'_i) Q(s, (a'_i, a_-i))`` on
the actions it took, with the critic's values as the critic saw them while training on the batch,
its policy mixed with epsilon-uniform exploration (annealed), as in PyMARL.

COMA+DMAC: the same networks plus a target policy rho; episodes come from a replay buffer; the
critic learns the divergence-regularised TD(lambda) targets, the actor the regularised
counterfactual advantage on actions drawn from the *current* policies, and rho and the target critic
track pi and the critic softly with rate ``tau``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import CounterfactualCritic
from dmac_lightning.policy import gather_actions
from dmac_lightning.returns import lambda_returns, masked_mean
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import check_positive_int, check_range


class Coma(MultiAgentModule):
    """COMA as published (on-policy).

    Args:
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        critic_hidden_dims: hidden widths of the critic MLP.
        target_update_interval: copy the critic into the target critic every this many critic
            optimiser steps (one per timestep of a batch; PyMARL: 200).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: the epsilon-bounded softmax's schedule.
        **kwargs: shared settings of :class:`MultiAgentModule` (gamma, learning rates, ...).
    """

    data_regime = "on_policy"
    target_networks = ("critic",)

    def __init__(
        self,
        td_lambda: float = 0.8,
        critic_hidden_dims: list[int] = [128, 128, 128],  # noqa: B006 - LightningCLI reads the default
        target_update_interval: int = 200,
        epsilon_start: float = 0.5,
        epsilon_finish: float = 0.01,
        epsilon_anneal_steps: int = 100_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon_start=epsilon_start, epsilon_finish=epsilon_finish, epsilon_anneal_steps=epsilon_anneal_steps, **kwargs)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_positive_int("model.target_update_interval", target_update_interval)
        self.td_lambda = td_lambda
        self.critic_hidden_dims = list(critic_hidden_dims)
        self.target_update_interval = target_update_interval

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.critic = CounterfactualCritic(info.state_dim, info.obs_dim, info.n_agents, info.n_actions, self.critic_hidden_dims)
        self.target_critic = freeze(copy.deepcopy(self.critic))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.rmsprop(self.critic.parameters(), self.lr_critic), self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_updates(*self.target_networks, every_n_critic_steps=self.target_update_interval)

    # -- critic ---------------------------------------------------------------------------------
    def q_values(self, critic: CounterfactualCritic, episodes: EpisodeBatch, actions: torch.Tensor, steps: slice) -> torch.Tensor:
        """``Q(s, (., a_-i))`` ``[B, t, n, A]`` over the slots ``steps``, the others' actions from ``actions``."""
        return critic(episodes.state[:, steps], episodes.observation[:, steps], actions, episodes.last_actions[:, steps])

    def target_values(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """The target critic at ``actions`` for every slot, one value per agent ``[B, L, n]``."""
        return gather_actions(self.q_values(self.target_critic, episodes, actions, slice(None)), actions)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        """TD(lambda) targets of the behaviour policy ``[B, T, n]``."""
        actions = episodes.bootstrap_actions(log_pi)
        next_q = self.target_values(episodes, actions)[:, 1:]
        return lambda_returns(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask, next_q, self.gamma, self.td_lambda
        )

    # -- actor ----------------------------------------------------------------------------------
    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        """COMA's counterfactual advantage ``Q(s, a) - sum_{a'_i} pi_i(a'_i) Q(s, (a'_i, a_-i))``."""
        q_taken = gather_actions(q_alternatives, actions)
        return q_taken - divergence.counterfactual_baseline(q_alternatives, log_pi.exp())

    # -- the steps ------------------------------------------------------------------------------
    def critic_step(self, episodes: EpisodeBatch) -> None:
        """One optimiser step per timestep, last to first, towards targets computed once (PyMARL)."""
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.log_policy(self.actor, episodes), self.log_rho(episodes))
        taken = episodes.actions[:, episodes.decisions]
        rows = torch.empty(*taken.shape, self.env_info.n_actions, device=taken.device)
        losses = []
        # Batches are cut after their longest episode, so every timestep holds at least one real step.
        for t in reversed(range(episodes.steps)):
            at_t = slice(t, t + 1)
            q_rows = self.q_values(self.critic, episodes, taken[:, at_t], at_t)
            rows[:, at_t] = q_rows.detach()
            loss = masked_mean((gather_actions(q_rows, taken[:, at_t]) - targets[:, at_t]) ** 2, episodes.step_mask[:, at_t])
            self.critic_optimizer_step(loss)
            losses.append(loss.detach())
        self.rows_seen_by_critic = rows
        self.record(
            **{
                "loss/critic": torch.stack(losses).mean(),
                "critic/q_taken": masked_mean(gather_actions(rows, taken), episodes.step_mask),
                "critic/target": masked_mean(targets, episodes.step_mask),
            }
        )

    def actor_q_alternatives(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """``Q(s, (., a_-i))`` for the actor: the rows the critic gave on this batch's taken actions
        while training on it, each before its own step (PyMARL's COMA)."""
        return self.rows_seen_by_critic

    def actor_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        log_pi = self.log_policy(self.actor, episodes)  # as it acted, with gradient
        log_rho = self.log_rho(episodes)
        actions = self.actor_actions(episodes, log_pi.detach())
        q_alternatives = self.actor_q_alternatives(episodes, actions)
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), None if log_rho is None else log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss)
        pi = log_pi[:, steps].detach().exp()
        self.record(
            **{
                "loss/actor": actor_loss,
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
                "actor/entropy": masked_mean(-(pi * log_pi[:, steps].detach()).sum(-1), episodes.step_mask),
                "train/epsilon": self.epsilon,
            }
        )


class ComaDmac(DivergenceRegularized, Coma):
    """COMA+DMAC: off-policy COMA with a target policy and the divergence-regularised updates.

    Args:
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...) and COMA's.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(target_update_interval=1, **kwargs)  # not used: the target critic follows target_critic_tau

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        return self.regularized_targets(episodes, self.target_values(episodes, actions), actions, log_pi, log_rho)

    def actor_q_alternatives(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the actions come from pi, and the critic has not trained on this batch yet
            return self.q_values(self.critic, episodes, actions, episodes.decisions)

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)
