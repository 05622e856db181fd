"""DOP (Wang et al., 2021) and DOP+DMAC (paper App. C.1).

Both share DOP's networks: stochastic policies (the agent GRU net), per-agent critics
``Q_i(s, o_i, .)`` (an MLP over state, observation and agent id) and the linear value decomposition
``Q_tot = sum_i k_i(s) Q_i(s, a_i) + b(s)`` with ``k_i(s) >= 0``.

DOP: the critic learns on-policy TD(lambda) targets on the fresh episodes plus off-policy
tree-backup targets on replayed ones; the actor follows the LVD policy gradient
``k_i(s) (Q_i(s, a_i) - sum_a pi_i(a) Q_i(s, a))`` on the fresh episodes only.

DOP+DMAC: a target policy rho is added; the critic learns the divergence-regularised off-policy
TD(lambda) targets on replayed episodes (for all samples, replacing tree backup), and the actor the
regularised LVD advantage on actions drawn from the current policies.
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
from dmac_lightning.networks import LinearDecompositionMixer, individual_critic_inputs, mlp
from dmac_lightning.policy import gather_actions, sample
from dmac_lightning.returns import lambda_returns, masked_mean, tree_backup_returns


class Dop(MultiAgentModule):
    """DOP as published: on-policy actor, critic from on-policy TD(lambda) + off-policy tree backup.

    Args:
        td_lambda: lambda of the on-policy TD(lambda) targets, in [0, 1].
        tree_backup_lambda: lambda of the off-policy tree-backup targets, in [0, 1].
        critic_hidden_dims: hidden widths of the per-agent critic MLP.
        mixing_embed_dim: hidden width of the networks giving k(s) and b(s).
        target_update_interval: copy critic and mixer into their targets every this many updates.
        epsilon_start, epsilon_finish, epsilon_anneal_steps: epsilon-uniform mixing of the policy.
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    data_regime = "mixed"

    def __init__(
        self,
        td_lambda: float = 0.8,
        tree_backup_lambda: float = 0.93,
        critic_hidden_dims: list[int] = [256, 256],  # noqa: B006 - LightningCLI reads the default
        mixing_embed_dim: int = 32,
        target_update_interval: int = 600,
        epsilon_start: float = 0.5,
        epsilon_finish: float = 0.05,
        epsilon_anneal_steps: int = 500_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("td_lambda", td_lambda, 0.0, 1.0)
        check_range("tree_backup_lambda", tree_backup_lambda, 0.0, 1.0)
        if target_update_interval < 1:
            raise ValueError(f"model.target_update_interval must be >= 1, got {target_update_interval!r}")
        self.save_hyperparameters()
        self.td_lambda, self.tree_backup_lambda = td_lambda, tree_backup_lambda
        self.critic_hidden_dims, self.mixing_embed_dim = list(critic_hidden_dims), mixing_embed_dim
        self.target_update_interval = target_update_interval
        self.explore_with_epsilon(epsilon_start, epsilon_finish, epsilon_anneal_steps)

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.critic = mlp(info.state_dim + info.obs_dim + info.n_agents, self.critic_hidden_dims, info.n_actions)
        self.mixer = LinearDecompositionMixer(info.state_dim, info.n_agents, self.mixing_embed_dim)
        self.target_critic = freeze(copy.deepcopy(self.critic))
        self.target_mixer = freeze(copy.deepcopy(self.mixer))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic = self.rmsprop([*self.critic.parameters(), *self.mixer.parameters()], self.lr_critic)
        return [critic, self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_callbacks("critic", "mixer", every_n_updates=self.target_update_interval)

    # -- the critic -----------------------------------------------------------------------------
    def individual_q(self, critic: torch.nn.Module, episodes: EpisodeBatch) -> torch.Tensor:
        """``Q_i(s, o_i, .)`` for every slot: ``[B, L, n, A]``."""
        return critic(individual_critic_inputs(episodes.observation, episodes.state))

    def q_tot_taken(self, episodes: EpisodeBatch) -> torch.Tensor:
        """The online ``Q_tot(s_t, a_t)`` at the stored actions, ``[B, T]`` (with gradient)."""
        steps = slice(0, episodes.steps)
        q_values = self.individual_q(self.critic, episodes)[:, steps]
        return self.mixer(gather_actions(q_values, episodes.actions[:, steps]), episodes.state[:, steps])

    def target_q_tot(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """``Qbar_tot(s_t, a_t)`` for every slot ``[B, L]``."""
        return self.target_mixer(gather_actions(self.individual_q(self.target_critic, episodes), actions), episodes.state)

    def critic_loss(self, episodes: EpisodeBatch, targets: torch.Tensor) -> torch.Tensor:
        return masked_mean((self.q_tot_taken(episodes) - targets) ** 2, episodes.joint_step_mask)

    def on_policy_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        next_q = self.target_q_tot(episodes, self.bootstrap_actions(episodes, log_pi))[:, 1:]
        return lambda_returns(episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q, self.gamma, self.td_lambda)

    def tree_backup_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        target_q = self.individual_q(self.target_critic, episodes)
        state = episodes.state
        # E_pi Q_tot is linear in the individual expectations under the decomposition.
        expected = (self.target_mixer.k(state) * (log_pi.exp() * target_q).sum(-1)).sum(-1) + self.target_mixer.b(state)
        actions = self.bootstrap_actions(episodes, log_pi)
        taken = self.target_mixer(gather_actions(target_q, actions), state)
        traces = self.tree_backup_lambda * gather_actions(log_pi, actions).sum(-1).exp()
        return tree_backup_returns(
            episodes.reward, episodes.terminated, episodes.joint_step_mask,
            expected[:, 1:], taken[:, 1:], traces[:, 1:], self.gamma,
        )

    # -- the actor ------------------------------------------------------------------------------
    def advantage(
        self, k: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        """DOP's LVD advantage ``k_i(s) (Q_i(s, a_i) - sum_a pi_i(a) Q_i(s, a))``."""
        return k * (gather_actions(q_values, actions) - divergence.counterfactual_baseline(q_values, log_pi.exp()))

    def actor_loss(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = slice(0, episodes.steps)
        with torch.no_grad():
            q_values = self.individual_q(self.critic, episodes)[:, steps]
            k = self.mixer.k(episodes.state[:, steps])
        advantage = self.advantage(k, q_values, actions, log_pi[:, steps].detach(), None if log_rho is None else log_rho[:, steps])
        loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        return loss, advantage

    # -- the update -----------------------------------------------------------------------------
    def update(self, batch: TensorDictBase) -> None:
        critic_optimizer, actor_optimizer = self.optimizers()
        fresh, replay = self.episode_batch(batch["fresh"]), self.episode_batch(batch["replay"])
        with torch.no_grad():
            on_policy = self.on_policy_targets(fresh, self.log_policy(self.actor, fresh, "explore"))
            tree_backup = self.tree_backup_targets(replay, self.log_policy(self.actor, replay, "explore"))
        on_policy_loss = self.critic_loss(fresh, on_policy)
        tree_backup_loss = self.critic_loss(replay, tree_backup)
        self.optimizer_step(critic_optimizer, on_policy_loss + tree_backup_loss)

        log_pi = self.log_policy(self.actor, fresh, "explore")
        actor_loss, advantage = self.actor_loss(fresh, log_pi, None, fresh.actions[:, : fresh.steps])
        self.optimizer_step(actor_optimizer, actor_loss)
        self.record(
            **{
                "loss/critic": on_policy_loss + tree_backup_loss,
                "loss/critic_on_policy": on_policy_loss,
                "loss/critic_tree_backup": tree_backup_loss,
                "loss/actor": actor_loss,
                "critic/target": masked_mean(on_policy, fresh.joint_step_mask),
                "actor/advantage_abs": masked_mean(advantage.abs(), fresh.step_mask),
                "train/epsilon": self.epsilon,
            }
        )


class DopDmac(Dop):
    """DOP+DMAC: DOP's networks plus rho; off-policy regularised TD(lambda); regularised LVD actor.

    Args:
        omega: regularisation coefficient, >= 0 (the authors' DOP+DMAC code: 0.1 via reward_scale 10).
        tau: soft-update rate of rho, in (0, 1].
        target_critic_tau: soft-update rate of the target critic and mixer (default ``tau``).
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        critic_hidden_dims: hidden widths of the per-agent critic MLP.
        mixing_embed_dim: hidden width of the networks giving k(s) and b(s).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: optional extra exploration (off).
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    data_regime = "off_policy"

    def __init__(
        self,
        omega: float = 0.2,
        tau: float = 0.01,
        target_critic_tau: float | None = None,
        td_lambda: float = 0.8,
        critic_hidden_dims: list[int] = [256, 256],  # noqa: B006
        mixing_embed_dim: int = 32,
        epsilon_start: float = 0.0,
        epsilon_finish: float = 0.0,
        epsilon_anneal_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            td_lambda=td_lambda,
            critic_hidden_dims=critic_hidden_dims,
            mixing_embed_dim=mixing_embed_dim,
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
        return dmac_callbacks(self.tau, self.target_critic_tau, "critic", "mixer")

    def advantage(
        self, k: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        return divergence.lvd_advantage_at(k, q_values, actions, log_pi, log_rho, self.omega)

    def update(self, batch: TensorDictBase) -> None:
        critic_optimizer, actor_optimizer = self.optimizers()
        episodes = self.episode_batch(batch)
        steps = slice(0, episodes.steps)
        log_pi = self.log_policy(self.actor, episodes, "explore")
        log_rho = self.log_target_policy(episodes)
        with torch.no_grad():
            next_actions = self.bootstrap_actions(episodes, log_pi.detach())
            next_q = self.target_q_tot(episodes, next_actions)[:, 1:]
            log_ratio = divergence.joint_log_ratio(gather_actions(log_pi, next_actions), gather_actions(log_rho, next_actions))
            targets = divergence.critic_targets(
                episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q, log_ratio[:, 1:],
                self.gamma, self.omega, self.td_lambda,
            )
        critic_loss = self.critic_loss(episodes, targets)
        self.optimizer_step(critic_optimizer, critic_loss)

        actions = sample(log_pi[:, steps].detach())
        actor_loss, advantage = self.actor_loss(episodes, log_pi, log_rho, actions)
        self.optimizer_step(actor_optimizer, actor_loss)
        kl = divergence.kl_divergence(log_pi[:, steps].detach(), log_rho[:, steps])
        self.record(
            **{
                "loss/critic": critic_loss,
                "loss/actor": actor_loss,
                "dmac/kl_pi_rho": masked_mean(kl, episodes.step_mask),
                "critic/target": masked_mean(targets, episodes.joint_step_mask),
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
            }
        )
