"""DOP (Wang et al., 2021) and DOP+DMAC (paper App. C.1).

Both share DOP's networks as its code has them: stochastic policies (the agent GRU net), per-agent
critics ``Q_i(s, o_i, .)`` (an MLP 256-256 over state, observation and agent id, with action and value
heads) and the linear value decomposition ``Q_tot = sum_i k_i(s) Q_i(s, a_i)``, ``k_i(s) >= 0``
summing to 1. The critic takes one optimiser step per timestep of a batch, first to last, towards
targets computed once; its target is copied every ``target_update_interval`` such steps.

DOP: the critic learns on-policy TD(lambda) targets on fresh episodes plus off-policy tree-backup
targets (cut after ``tree_backup_steps`` terms) on replayed ones, in one loss; the actor follows the
LVD policy gradient ``k_i(s) (Q_i(s, a_i) - sum_a pi_i(a) Q_i(s, a))`` on the fresh episodes only.

DOP+DMAC (the authors' published DMAC): a target policy rho is added; the critic learns the
divergence-regularised off-policy TD(lambda) targets on every sample (replacing tree backup), and the
actor the regularised LVD advantage on actions drawn from the current policies.
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
from dmac_lightning.networks import DuelingMLP, LinearDecompositionMixer, individual_critic_inputs
from dmac_lightning.policy import gather_actions
from dmac_lightning.returns import lambda_returns, masked_mean, tree_backup_returns
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import INF, check_positive_int, check_range


class Dop(MultiAgentModule):
    """DOP as published: on-policy actor, critic from on-policy TD(lambda) + off-policy tree backup.

    Args:
        td_lambda: lambda of the on-policy TD(lambda) targets, in [0, 1].
        tree_backup_lambda: lambda of the off-policy tree-backup targets, in [0, 1].
        tree_backup_steps: terms of the tree-backup sum kept (DOP's code: 5); 0 keeps them all.
        critic_hidden_dims: hidden widths of the per-agent critic MLP.
        mixing_embed_dim: hidden width of the networks giving k(s).
        target_update_interval: copy critic and mixer into their targets every this many critic
            optimiser steps (DOP's code: 600).
        grad_clip_norm: gradient-norm clip of both optimisers (DOP's code: 20).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: epsilon-uniform mixing of the policy.
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    data_regime = "mixed"
    target_networks = ("critic", "mixer")

    def __init__(
        self,
        td_lambda: float = 0.8,
        tree_backup_lambda: float = 0.93,
        tree_backup_steps: int = 5,
        critic_hidden_dims: list[int] = [256, 256],  # noqa: B006 - LightningCLI reads the default
        mixing_embed_dim: int = 32,
        target_update_interval: int = 600,
        epsilon_start: float = 0.5,
        epsilon_finish: float = 0.05,
        epsilon_anneal_steps: int = 500_000,
        grad_clip_norm: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            epsilon_start=epsilon_start, epsilon_finish=epsilon_finish, epsilon_anneal_steps=epsilon_anneal_steps,
            grad_clip_norm=grad_clip_norm, **kwargs,
        )
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_range("model.tree_backup_lambda", tree_backup_lambda, 0.0, 1.0)
        check_range("model.tree_backup_steps", tree_backup_steps, 0, INF)
        self.tree_backup_steps = tree_backup_steps
        check_positive_int("model.target_update_interval", target_update_interval)
        self.td_lambda, self.tree_backup_lambda = td_lambda, tree_backup_lambda
        self.critic_hidden_dims, self.mixing_embed_dim = list(critic_hidden_dims), mixing_embed_dim
        self.target_update_interval = target_update_interval

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.critic = DuelingMLP(info.state_dim + info.obs_dim + info.n_agents, self.critic_hidden_dims, info.n_actions)
        self.mixer = LinearDecompositionMixer(info.state_dim, info.n_agents, self.mixing_embed_dim)
        self.target_critic = freeze(copy.deepcopy(self.critic))
        self.target_mixer = freeze(copy.deepcopy(self.mixer))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic = self.rmsprop([*self.critic.parameters(), *self.mixer.parameters()], self.lr_critic)
        return [critic, self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_updates(*self.target_networks, every_n_critic_steps=self.target_update_interval)

    # -- the critic -----------------------------------------------------------------------------
    def individual_q(self, critic: torch.nn.Module, episodes: EpisodeBatch) -> torch.Tensor:
        """``Q_i(s, o_i, .)`` for every slot: ``[B, L, n, A]``."""
        return critic(individual_critic_inputs(episodes.observation, episodes.state))

    def train_critic_per_timestep(self, parts: list[tuple[EpisodeBatch, torch.Tensor]]) -> torch.Tensor:
        """One critic step per timestep, first to last, on the squared errors of every ``(episodes,
        targets)`` part at that step in one mean (DOP's code: its fresh and replayed episodes in one batch)."""
        losses = []
        # Batches are cut after their longest episode, so each timestep holds a real step of some part.
        for t in range(max(episodes.steps for episodes, _ in parts)):
            squared_errors, counts = [], []
            for episodes, targets in parts:
                if t >= episodes.steps:
                    continue
                at_t = slice(t, t + 1)
                q_values = self.critic(individual_critic_inputs(episodes.observation[:, at_t], episodes.state[:, at_t]))
                q_tot = self.mixer(gather_actions(q_values, episodes.actions[:, at_t]), episodes.state[:, at_t])
                mask = episodes.joint_step_mask[:, at_t].to(q_tot.dtype)
                squared_errors.append((((q_tot - targets[:, at_t]) ** 2) * mask).sum())
                counts.append(mask.sum())
            loss = torch.stack(squared_errors).sum() / torch.stack(counts).sum().clamp(min=1)
            self.critic_optimizer_step(loss)
            losses.append(loss.detach())
        return torch.stack(losses).mean()

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
        expected = (self.target_mixer.k(state) * (log_pi.exp() * target_q).sum(-1)).sum(-1)
        actions = episodes.bootstrap_actions(log_pi)
        taken = self.target_mixer(gather_actions(target_q, actions), state)
        traces = self.tree_backup_lambda * gather_actions(log_pi, actions).sum(-1).exp()
        return tree_backup_returns(
            episodes.reward, episodes.terminated, episodes.joint_step_mask,
            expected[:, 1:], taken[:, 1:], traces[:, 1:], self.gamma, self.tree_backup_steps or None,
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
        critic_loss = self.train_critic_per_timestep([(fresh, on_policy), (replay, tree_backup)])
        self.record(
            **{
                "loss/critic": critic_loss,
                "critic/target": masked_mean(on_policy, fresh.joint_step_mask),
                "critic/target_tree_backup": masked_mean(tree_backup, replay.joint_step_mask),
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
        grad_clip_norm: gradient-norm clip of both optimisers (the authors' DOP+DMAC: 10).
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...; the authors'
            DOP+DMAC code: omega 0.1 via reward_scale 10) and DOP's.
    """

    def __init__(self, grad_clip_norm: float = 10.0, **kwargs: Any) -> None:
        # Not used: no tree backup (regularised TD(lambda) for all samples); the target critic follows
        # target_critic_tau or target_critic_copy_every.
        super().__init__(
            grad_clip_norm=grad_clip_norm, tree_backup_lambda=0.0, tree_backup_steps=0, target_update_interval=1, **kwargs
        )

    def critic_step(self, episodes: EpisodeBatch) -> None:
        """Regularised TD(lambda) on every sample, one step per timestep."""
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.log_policy(self.actor, episodes), self.log_rho(episodes))
        critic_loss = self.train_critic_per_timestep([(episodes, targets)])
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
