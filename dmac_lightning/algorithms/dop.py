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
from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.episodes import EpisodeBatch, FreshAndReplayed
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import LinearDecompositionMixer, individual_critic_inputs, mlp
from dmac_lightning.policy import gather_actions
from dmac_lightning.returns import lambda_returns, masked_mean, tree_backup_returns
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import check_positive_int, check_range


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
    target_networks = ("critic", "mixer")

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
        super().__init__(epsilon_start=epsilon_start, epsilon_finish=epsilon_finish, epsilon_anneal_steps=epsilon_anneal_steps, **kwargs)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_range("model.tree_backup_lambda", tree_backup_lambda, 0.0, 1.0)
        check_positive_int("model.target_update_interval", target_update_interval)
        self.td_lambda, self.tree_backup_lambda = td_lambda, tree_backup_lambda
        self.critic_hidden_dims, self.mixing_embed_dim = list(critic_hidden_dims), mixing_embed_dim
        self.target_update_interval = target_update_interval

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
        return hard_target_updates(*self.target_networks, every_n_updates=self.target_update_interval)

    # -- the critic -----------------------------------------------------------------------------
    def individual_q(self, critic: torch.nn.Module, episodes: EpisodeBatch) -> torch.Tensor:
        """``Q_i(s, o_i, .)`` for every slot: ``[B, L, n, A]``."""
        return critic(individual_critic_inputs(episodes.observation, episodes.state))

    def td_loss(self, episodes: EpisodeBatch, targets: torch.Tensor) -> torch.Tensor:
        """Masked squared error of the online ``Q_tot(s_t, a_t)`` at the stored actions."""
        steps = episodes.decisions
        q_values = self.individual_q(self.critic, episodes)[:, steps]
        q_tot = self.mixer(gather_actions(q_values, episodes.actions[:, steps]), episodes.state[:, steps])
        return masked_mean((q_tot - targets) ** 2, episodes.joint_step_mask)

    def target_values(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """``Qbar_tot(s_t, a_t)`` for every slot ``[B, L]``."""
        return self.target_mixer(gather_actions(self.individual_q(self.target_critic, episodes), actions), episodes.state)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        """On-policy TD(lambda) targets ``[B, T]``."""
        next_q = self.target_values(episodes, episodes.bootstrap_actions(log_pi))[:, 1:]
        return lambda_returns(episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q, self.gamma, self.td_lambda)

    def tree_backup_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        target_q = self.individual_q(self.target_critic, episodes)
        state = episodes.state
        # E_pi Q_tot is linear in the individual expectations under the decomposition.
        expected = (self.target_mixer.k(state) * (log_pi.exp() * target_q).sum(-1)).sum(-1) + self.target_mixer.b(state)
        actions = episodes.bootstrap_actions(log_pi)
        taken = self.target_mixer(gather_actions(target_q, actions), state)
        traces = self.tree_backup_lambda * gather_actions(log_pi, actions).sum(-1).exp()
        return tree_backup_returns(
            episodes.reward, episodes.terminated, episodes.joint_step_mask,
            expected[:, 1:], taken[:, 1:], traces[:, 1:], self.gamma,
        )

    def episode_batch(self, batch: TensorDictBase) -> EpisodeBatch | FreshAndReplayed:
        if self.data_regime == "mixed":
            return FreshAndReplayed(super().episode_batch(batch["fresh"]), super().episode_batch(batch["replay"]))
        return super().episode_batch(batch)

    def critic_step(self, episodes: FreshAndReplayed) -> None:
        """On-policy TD(lambda) on the fresh episodes plus tree backup on the replayed ones."""
        fresh, replay = episodes
        with torch.no_grad():
            on_policy = self.critic_targets(fresh, self.log_policy(self.actor, fresh), None)
            tree_backup = self.tree_backup_targets(replay, self.log_policy(self.actor, replay))
        on_policy_loss = self.td_loss(fresh, on_policy)
        tree_backup_loss = self.td_loss(replay, tree_backup)
        self.critic_optimizer_step(on_policy_loss + tree_backup_loss)
        self.record(
            **{
                "loss/critic": on_policy_loss + tree_backup_loss,
                "loss/critic_on_policy": on_policy_loss,
                "loss/critic_tree_backup": tree_backup_loss,
                "critic/target": masked_mean(on_policy, fresh.joint_step_mask),
            }
        )

    # -- the actor ------------------------------------------------------------------------------
    def actor_episodes(self, episodes: FreshAndReplayed) -> EpisodeBatch:
        """The episodes the actor learns from: the fresh ones (on-policy)."""
        return episodes.fresh

    def advantage(
        self, k: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None
    ) -> torch.Tensor:
        """DOP's LVD advantage ``k_i(s) (Q_i(s, a_i) - sum_a pi_i(a) Q_i(s, a))``."""
        return k * (gather_actions(q_values, actions) - divergence.counterfactual_baseline(q_values, log_pi.exp()))

    def actor_step(self, episodes: FreshAndReplayed) -> None:
        episodes = self.actor_episodes(episodes)
        steps = episodes.decisions
        log_pi = self.log_policy(self.actor, episodes)
        log_rho = self.log_rho(episodes)
        actions = self.actor_actions(episodes, log_pi.detach())
        with torch.no_grad():
            q_values = self.individual_q(self.critic, episodes)[:, steps]
            k = self.mixer.k(episodes.state[:, steps])
        advantage = self.advantage(k, q_values, actions, log_pi[:, steps].detach(), None if log_rho is None else log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss)
        self.record(
            **{
                "loss/actor": actor_loss,
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
                "train/epsilon": self.epsilon,
            }
        )


class DopDmac(DivergenceRegularized, Dop):
    """DOP+DMAC: DOP's networks plus rho; off-policy regularised TD(lambda); regularised LVD actor.

    Args:
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...; the authors'
            DOP+DMAC code: omega 0.1 via reward_scale 10) and DOP's.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Not used: no tree backup (regularised TD(lambda) for all samples), soft target networks.
        super().__init__(tree_backup_lambda=0.0, target_update_interval=1, **kwargs)

    def critic_step(self, episodes: EpisodeBatch) -> None:
        """Regularised TD(lambda) on the replayed episodes."""
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.log_policy(self.actor, episodes), self.log_rho(episodes))
        critic_loss = self.td_loss(episodes, targets)
        self.critic_optimizer_step(critic_loss)
        self.record(**{"loss/critic": critic_loss, "critic/target": masked_mean(targets, episodes.joint_step_mask)})

    def actor_episodes(self, episodes: EpisodeBatch) -> EpisodeBatch:
        return episodes

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        return self.regularized_targets(episodes, self.target_values(episodes, actions), actions, log_pi, log_rho)

    def advantage(
        self, k: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        return divergence.lvd_advantage_at(k, q_values, actions, log_pi, log_rho, self.omega)
