"""MAAC (Iqbal & Sha, 2019) and MAAC+DMAC (paper App. C.1, C.2).

Both use MAAC's networks with parameter sharing and a GRU in policy and critic (paper C.2): the
agent GRU policy, its target policy, and the attention critic giving ``Q_i(tau, (., a_-i))`` for all
of agent i's actions.

MAAC: soft (entropy-regularised) one-step targets ``r + gamma (Qbar_i(s', a') - alpha log mu_i(a'_i))``
with next actions from the target policy mu; actor ``E[log pi_i (alpha log pi_i - A_i)]`` with the
counterfactual advantage on actions drawn from the current policies; target policy and target critic
soft-updated with ``tau``; attention-logit and policy-logit regularisers.

MAAC+DMAC: the same networks; only the update rules change: the target policy becomes rho, the
critic learns the divergence-regularised targets with the stored next action, and the actor follows
the divergence-regularised counterfactual advantage.
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
)
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import AttentionCritic, agent_input_dim, agent_inputs
from dmac_lightning.policy import gather_actions, sample
from dmac_lightning.returns import lambda_returns, masked_mean


class Maac(MultiAgentModule):
    """MAAC as published (off-policy, entropy-regularised).

    Args:
        alpha: entropy temperature (MAAC: 1 / reward_scale = 0.01).
        tau: soft-update rate of the target policy and the target critic (MAAC: 0.001).
        critic_hidden_dim: width of the critic's encoders and GRU.
        attention_heads: attention heads of the critic.
        attention_dim: size of each attention head (paper: 32).
        attention_regularization: weight of the squared attention logits in the critic loss.
        policy_regularization: weight of the squared policy logits in the actor loss.
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        tau: float = 0.001,
        critic_hidden_dim: int = 128,
        attention_heads: int = 4,
        attention_dim: int = 32,
        attention_regularization: float = 1e-3,
        policy_regularization: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("alpha", alpha, 0.0, float("inf"))
        check_range("tau", tau, 0.0, 1.0, low_open=True)
        self.save_hyperparameters()
        self.alpha, self.tau = alpha, tau
        self.critic_hidden_dim, self.attention_heads, self.attention_dim = critic_hidden_dim, attention_heads, attention_dim
        self.attention_regularization, self.policy_regularization = attention_regularization, policy_regularization

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.add_target_policy()  # MAAC's own target policy (rho in MAAC+DMAC)
        input_dim = agent_input_dim(info.obs_dim, info.n_agents, info.n_actions, self.last_action_input)
        self.critic = AttentionCritic(
            input_dim, info.n_agents, info.n_actions, self.critic_hidden_dim, self.attention_heads, self.attention_dim
        )
        self.target_critic = freeze(copy.deepcopy(self.critic))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.rmsprop(self.critic.parameters(), self.lr_critic), self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return dmac_callbacks(self.tau, self.tau, "critic")  # MAAC's target policy: the same soft rule

    def histories(self, critic: AttentionCritic, episodes: EpisodeBatch) -> torch.Tensor:
        last_actions = episodes.last_actions if self.last_action_input else None
        return critic.encode(agent_inputs(episodes.observation, last_actions))

    # -- hooks that differ between MAAC and MAAC+DMAC -------------------------------------------
    def critic_targets(
        self, episodes: EpisodeBatch, target_histories: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        next_actions = sample(log_rho)  # a' ~ MAAC's target policy
        next_q = gather_actions(self.target_critic(target_histories, next_actions)[0], next_actions)
        soft_next = (next_q - self.alpha * gather_actions(log_rho, next_actions))[:, 1:]
        return lambda_returns(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask, soft_next, self.gamma, 0.0
        )

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        """MAAC's ``A_i - alpha log pi_i(a_i)``: its actor loss ``log pi (alpha log pi - A)`` as a policy gradient."""
        counterfactual = gather_actions(q_alternatives, actions) - divergence.counterfactual_baseline(q_alternatives, log_pi.exp())
        return counterfactual - self.alpha * gather_actions(log_pi, actions)

    # -- the update -----------------------------------------------------------------------------
    def update(self, batch: TensorDictBase) -> None:
        critic_optimizer, actor_optimizer = self.optimizers()
        episodes = self.episode_batch(batch)
        steps = slice(0, episodes.steps)
        logits = self.unroll(self.actor, episodes)
        log_pi = self.policy_log_probs(logits, episodes.available, "sample")
        log_rho = self.log_target_policy(episodes)
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.histories(self.target_critic, episodes), log_pi.detach(), log_rho)

        histories = self.histories(self.critic, episodes)
        q_values, attention_logits = self.critic(histories[:, steps], episodes.actions[:, steps])
        q_taken = gather_actions(q_values, episodes.actions[:, steps])
        critic_loss = masked_mean((q_taken - targets) ** 2, episodes.step_mask)
        regularizer = self.attention_regularization * (attention_logits**2).mean() if attention_logits.numel() else 0.0
        self.optimizer_step(critic_optimizer, critic_loss + regularizer)

        with torch.no_grad():  # the actor follows the critic as it is after its step (encoder included)
            actions = sample(log_pi[:, steps].detach())
            q_alternatives, _ = self.critic(self.histories(self.critic, episodes)[:, steps], actions)
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        logit_penalty = self.policy_regularization * masked_mean((logits[:, steps] ** 2).mean(-1), episodes.step_mask)
        self.optimizer_step(actor_optimizer, actor_loss + logit_penalty)

        kl = divergence.kl_divergence(log_pi[:, steps].detach(), log_rho[:, steps])
        self.record(
            **{
                "loss/critic": critic_loss,
                "loss/actor": actor_loss,
                "dmac/kl_pi_rho": masked_mean(kl, episodes.step_mask),
                "critic/q_taken": masked_mean(q_taken.detach(), episodes.step_mask),
                "critic/target": masked_mean(targets, episodes.step_mask),
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
            }
        )


class MaacDmac(Maac):
    """MAAC+DMAC: MAAC's networks; its target policy becomes rho; DMAC's critic and actor updates.

    Args:
        omega: regularisation coefficient, >= 0.
        tau: soft-update rate of rho, in (0, 1].
        target_critic_tau: soft-update rate of the target critic (default ``tau``).
        td_lambda: TD(lambda) factor of the critic targets (MAAC's are one-step: 0).
        critic_hidden_dim, attention_heads, attention_dim, attention_regularization,
            policy_regularization: MAAC's network settings.
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    def __init__(
        self,
        omega: float = 0.2,
        tau: float = 0.01,
        target_critic_tau: float | None = None,
        td_lambda: float = 0.0,
        critic_hidden_dim: int = 128,
        attention_heads: int = 4,
        attention_dim: int = 32,
        attention_regularization: float = 1e-3,
        policy_regularization: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            alpha=0.0,
            tau=tau,
            critic_hidden_dim=critic_hidden_dim,
            attention_heads=attention_heads,
            attention_dim=attention_dim,
            attention_regularization=attention_regularization,
            policy_regularization=policy_regularization,
            **kwargs,
        )
        check_range("td_lambda", td_lambda, 0.0, 1.0)
        self.save_hyperparameters()
        self.regularize_with_divergence(omega, tau, target_critic_tau)
        self.td_lambda = td_lambda

    def configure_callbacks(self) -> list:
        return dmac_callbacks(self.tau, self.target_critic_tau, "critic")

    def critic_targets(
        self, episodes: EpisodeBatch, target_histories: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        next_actions = self.bootstrap_actions(episodes, log_pi)
        target_q = gather_actions(self.target_critic(target_histories, next_actions)[0], next_actions)[:, 1:]
        log_ratio = divergence.joint_log_ratio(gather_actions(log_pi, next_actions), gather_actions(log_rho, next_actions))
        return divergence.critic_targets(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask, target_q,
            log_ratio[:, 1:, None], self.gamma, self.omega, self.td_lambda,
        )

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)
