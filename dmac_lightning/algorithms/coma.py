"""COMA (Foerster et al., 2018) and COMA+DMAC (paper App. C.1).

COMA: on-policy. A centralised critic ``Q(s, a_-i, .)`` (MLP 3x128) learns TD(lambda) targets from a
target critic copied every ``target_update_interval`` updates; each actor follows the counterfactual
advantage ``Q(s, a) - sum_{a'_i} pi_i(a'_i) Q(s, (a'_i, a_-i))`` on the actions it took, its policy
mixed with epsilon-uniform exploration (annealed), as in PyMARL.

COMA+DMAC: the same networks plus a target policy rho; episodes come from a replay buffer; the
critic learns the divergence-regularised TD(lambda) targets, the actor the regularised
counterfactual advantage on actions drawn from the *current* policies, and rho and the target critic
track pi and the critic softly with rate ``tau``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from tensordict import TensorDictBase

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import (
    EpisodeBatch,
    MultiAgentModule,
    check_range,
    dmac_callbacks,
    freeze,
    hard_target_callbacks,
)
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import CounterfactualCritic
from dmac_lightning.policy import gather_actions, sample
from dmac_lightning.returns import lambda_returns, masked_mean


class Coma(MultiAgentModule):
    """COMA as published (on-policy).

    Args:
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        critic_hidden_dims: hidden widths of the critic MLP.
        target_update_interval: copy the critic into the target critic every this many updates.
            (PyMARL's COMA copies every 200 critic steps, taking one step per time step of a batch;
            this critic takes one step per batch of episodes, and 25 updates of 8 episodes each is
            200 episodes.)
        epsilon_start: weight of the uniform policy mixed into pi at the start of training.
        epsilon_finish: ... at the end of the annealing.
        epsilon_anneal_steps: env steps over which epsilon anneals linearly.
        **kwargs: shared settings of :class:`MultiAgentModule` (gamma, learning rates, ...).
    """

    data_regime = "on_policy"

    def __init__(
        self,
        td_lambda: float = 0.8,
        critic_hidden_dims: list[int] = [128, 128, 128],  # noqa: B006 - LightningCLI reads the default
        target_update_interval: int = 25,
        epsilon_start: float = 0.5,
        epsilon_finish: float = 0.01,
        epsilon_anneal_steps: int = 100_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("td_lambda", td_lambda, 0.0, 1.0)
        if target_update_interval < 1:
            raise ValueError(f"model.target_update_interval must be >= 1, got {target_update_interval!r}")
        self.save_hyperparameters()
        self.td_lambda = td_lambda
        self.critic_hidden_dims = list(critic_hidden_dims)
        self.target_update_interval = target_update_interval
        self.explore_with_epsilon(epsilon_start, epsilon_finish, epsilon_anneal_steps)

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.critic = CounterfactualCritic(info.state_dim, info.obs_dim, info.n_agents, info.n_actions, self.critic_hidden_dims)
        self.target_critic = freeze(copy.deepcopy(self.critic))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.rmsprop(self.critic.parameters(), self.lr_critic), self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_callbacks("critic", every_n_updates=self.target_update_interval)

    # -- policy ---------------------------------------------------------------------------------
    def log_pi(self, episodes: EpisodeBatch) -> torch.Tensor:
        """The behaviour-consistent policy ``[B, L, n, A]`` (with gradient)."""
        return self.log_policy(self.actor, episodes, "explore")

    def log_rho(self, episodes: EpisodeBatch) -> torch.Tensor | None:
        return None

    # -- critic ---------------------------------------------------------------------------------
    def q_values(self, critic: CounterfactualCritic, episodes: EpisodeBatch, actions: torch.Tensor, steps: slice) -> torch.Tensor:
        return critic(episodes.state[:, steps], episodes.observation[:, steps], actions, episodes.last_actions[:, steps])

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        actions = self.bootstrap_actions(episodes, log_pi)
        next_q = gather_actions(self.q_values(self.target_critic, episodes, actions, slice(None)), actions)[:, 1:]
        return lambda_returns(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask, next_q, self.gamma, self.td_lambda
        )

    # -- actor ----------------------------------------------------------------------------------
    def actor_actions(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        return episodes.actions[:, : episodes.steps]

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        q_taken = gather_actions(q_alternatives, actions)
        return q_taken - divergence.counterfactual_baseline(q_alternatives, log_pi.exp())

    # -- the update -----------------------------------------------------------------------------
    def update(self, batch: TensorDictBase) -> None:
        critic_optimizer, actor_optimizer = self.optimizers()
        episodes = self.episode_batch(batch)
        steps = slice(0, episodes.steps)
        log_pi = self.log_pi(episodes)
        log_rho = self.log_rho(episodes)

        with torch.no_grad():
            targets = self.critic_targets(episodes, log_pi.detach(), log_rho)
        q_taken = gather_actions(self.q_values(self.critic, episodes, episodes.actions[:, steps], steps), episodes.actions[:, steps])
        critic_loss = masked_mean((q_taken - targets) ** 2, episodes.step_mask)
        self.optimizer_step(critic_optimizer, critic_loss)

        actions = self.actor_actions(episodes, log_pi.detach())
        with torch.no_grad():
            q_alternatives = self.q_values(self.critic, episodes, actions, steps)
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), None if log_rho is None else log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(actor_optimizer, actor_loss)

        pi = log_pi[:, steps].detach().exp()
        self.record(
            **{
                "loss/critic": critic_loss,
                "loss/actor": actor_loss,
                "critic/q_taken": masked_mean(q_taken.detach(), episodes.step_mask),
                "critic/target": masked_mean(targets, episodes.step_mask),
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
                "actor/entropy": masked_mean(-(pi * log_pi[:, steps].detach()).sum(-1), episodes.step_mask),
            }
        )
        self.record_extra(episodes, log_pi.detach(), log_rho)

    def record_extra(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> None:
        self.record(**{"train/epsilon": self.epsilon})


class ComaDmac(Coma):
    """COMA+DMAC: off-policy COMA with a target policy and the divergence-regularised updates.

    Args:
        omega: regularisation coefficient, >= 0 (paper: 0.2 on the stochastic game, 0.01 on SMAC).
        tau: soft-update rate of the target policy rho, in (0, 1].
        target_critic_tau: soft-update rate of the target critic, in (0, 1]; defaults to ``tau``.
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        critic_hidden_dims: hidden widths of the critic MLP.
        epsilon_start, epsilon_finish, epsilon_anneal_steps: optional extra exploration (off by
            default: the divergence regulariser explores).
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    data_regime = "off_policy"

    def __init__(
        self,
        omega: float = 0.2,
        tau: float = 0.01,
        target_critic_tau: float | None = None,
        td_lambda: float = 0.8,
        critic_hidden_dims: list[int] = [128, 128, 128],  # noqa: B006
        epsilon_start: float = 0.0,
        epsilon_finish: float = 0.0,
        epsilon_anneal_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            td_lambda=td_lambda,
            critic_hidden_dims=critic_hidden_dims,
            epsilon_start=epsilon_start,
            epsilon_finish=epsilon_finish,
            epsilon_anneal_steps=epsilon_anneal_steps,
            **kwargs,
        )
        self.save_hyperparameters()
        self.regularize_with_divergence(omega, tau, target_critic_tau)

    def build(self, info: EnvInfo) -> None:
        super().build(info)
        self.add_target_policy()

    def configure_callbacks(self) -> list:
        return dmac_callbacks(self.tau, self.target_critic_tau, "critic")

    def log_rho(self, episodes: EpisodeBatch) -> torch.Tensor:
        return self.log_target_policy(episodes)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        actions = self.bootstrap_actions(episodes, log_pi)
        next_q = gather_actions(self.q_values(self.target_critic, episodes, actions, slice(None)), actions)[:, 1:]
        log_ratio = divergence.joint_log_ratio(gather_actions(log_pi, actions), gather_actions(log_rho, actions))
        return divergence.critic_targets(
            episodes.reward[..., None],
            episodes.terminated[..., None],
            episodes.step_mask,
            next_q,
            log_ratio[:, 1:, None],
            self.gamma,
            self.omega,
            self.td_lambda,
        )

    def actor_actions(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        return sample(log_pi[:, : episodes.steps])

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)

    def record_extra(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> None:
        steps = slice(0, episodes.steps)
        kl = divergence.kl_divergence(log_pi[:, steps], log_rho[:, steps])
        self.record(**{"dmac/kl_pi_rho": masked_mean(kl, episodes.step_mask)})
