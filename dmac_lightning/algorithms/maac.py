"""MAAC (Iqbal & Sha, 2019) and MAAC+DMAC (paper App. C.1, C.2).

Both use MAAC's networks with parameter sharing and a GRU in policy and critic (paper C.2): the
agent GRU policy, its target policy, and the attention critic giving ``Q_i(tau, (., a_-i))`` for all
of agent i's actions.

MAAC: soft (entropy-regularised) one-step targets ``r + gamma (1 - d) Qbar_i(s', a') - alpha log mu_i(a'_i)``
(the entropy term outside the discount, as MAAC's code has it) with next actions from the target
policy mu; actor ``E[log pi_i (alpha log pi_i - A_i)]`` with the counterfactual advantage on actions
drawn from the current policies; target policy and target critic soft-updated with ``tau``;
attention-logit and policy-logit regularisers; MAAC's gradient clips and critic weight decay.

MAAC+DMAC: the same networks; only the update rules change: the target policy becomes rho, the
critic learns the divergence-regularised targets with the stored next action, and the actor follows
the divergence-regularised counterfactual advantage.
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
from dmac_lightning.networks import AttentionCritic, agent_input_dim, agent_inputs
from dmac_lightning.policy import gather_actions, sample
from dmac_lightning.returns import lambda_returns, masked_mean
from dmac_lightning.targets import freeze, soft_target_updates, target_policy_update
from dmac_lightning.validation import INF, check_range


class Maac(MultiAgentModule):
    """MAAC as published (off-policy, entropy-regularised).

    Args:
        alpha: entropy temperature (MAAC: 1 / reward_scale = 0.01).
        tau: soft-update rate of the target policy and the target critic (MAAC: 0.001).
        td_lambda: TD(lambda) factor of the critic targets (MAAC's are one-step: 0).
        critic_hidden_dim: width of the critic's encoders and GRU.
        attention_heads: attention heads of the critic.
        attention_dim: size of each attention head (paper: 32).
        attention_regularization: weight of the squared attention logits (mean per head, summed over
            heads) in the critic loss.
        policy_regularization: weight of the squared policy logits in the actor loss.
        critic_weight_decay: L2 weight decay of the critic's optimiser (MAAC: 1e-3).
        critic_grad_clip_per_agent: the critic's gradient-norm clip is this times the number of agents
            (MAAC: 10).
        grad_clip_norm: the policy's gradient-norm clip (MAAC: 0.5).
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    target_networks = ("critic",)

    def __init__(
        self,
        alpha: float = 0.01,
        tau: float = 0.001,
        td_lambda: float = 0.0,
        critic_hidden_dim: int = 128,
        attention_heads: int = 4,
        attention_dim: int = 32,
        attention_regularization: float = 1e-3,
        policy_regularization: float = 1e-3,
        critic_weight_decay: float = 1e-3,
        critic_grad_clip_per_agent: float = 10.0,
        grad_clip_norm: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(grad_clip_norm=grad_clip_norm, **kwargs)
        check_range("model.alpha", alpha, 0.0, INF)
        check_range("model.critic_weight_decay", critic_weight_decay, 0.0, INF)
        check_range("model.critic_grad_clip_per_agent", critic_grad_clip_per_agent, 0.0, INF)
        self.critic_weight_decay, self.critic_grad_clip_per_agent = critic_weight_decay, critic_grad_clip_per_agent
        check_range("model.tau", tau, 0.0, 1.0, low_open=True)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        self.alpha, self.tau, self.td_lambda = alpha, tau, td_lambda
        self.critic_hidden_dim, self.attention_heads, self.attention_dim = critic_hidden_dim, attention_heads, attention_dim
        self.attention_regularization, self.policy_regularization = attention_regularization, policy_regularization

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.target_actor = freeze(copy.deepcopy(self.actor))  # MAAC's own target policy (rho in MAAC+DMAC)
        input_dim = agent_input_dim(info.obs_dim, info.n_agents, info.n_actions, self.last_action_input)
        self.critic = AttentionCritic(
            input_dim, info.n_agents, info.n_actions, self.critic_hidden_dim, self.attention_heads, self.attention_dim
        )
        self.target_critic = freeze(copy.deepcopy(self.critic))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic = self.rmsprop(self.critic.parameters(), self.lr_critic)
        for group in critic.param_groups:
            group["weight_decay"] = self.critic_weight_decay
        return [critic, self.rmsprop(self.actor.parameters(), self.lr_actor)]

    @property
    def critic_grad_clip_norm(self) -> float:
        return self.critic_grad_clip_per_agent * self.env_info.n_agents

    def configure_callbacks(self) -> list:
        return [target_policy_update(self.tau), *soft_target_updates(self.tau, *self.target_networks)]

    def log_rho(self, episodes: EpisodeBatch) -> torch.Tensor:
        """MAAC's target policy ``mu`` over stored histories."""
        with torch.no_grad():
            return self.log_policy(self.target_actor, episodes)

    def actor_actions(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        return sample(log_pi[:, episodes.decisions])  # MAAC's actor samples from the current policies

    # -- critic ---------------------------------------------------------------------------------
    def histories(self, critic: AttentionCritic, episodes: EpisodeBatch) -> torch.Tensor:
        last_actions = episodes.last_actions if self.last_action_input else None
        return critic.encode(agent_inputs(episodes.observation, last_actions))

    def target_values(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """The target critic at ``actions`` for every slot, one value per agent ``[B, L, n]``."""
        return gather_actions(self.target_critic(self.histories(self.target_critic, episodes), actions)[0], actions)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        """Soft targets with next actions from the target policy ``mu``, ``[B, T, n]``: the entropy term
        is subtracted outside the discount and the termination mask, as in MAAC's code."""
        actions = sample(log_rho)
        returns = lambda_returns(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask,
            self.target_values(episodes, actions)[:, 1:], self.gamma, self.td_lambda,
        )
        return returns - self.alpha * gather_actions(log_rho, actions)[:, 1:]

    # -- actor ----------------------------------------------------------------------------------
    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        """MAAC's ``A_i - alpha log pi_i(a_i)``: its actor loss ``log pi (alpha log pi - A)`` as a policy gradient."""
        counterfactual = gather_actions(q_alternatives, actions) - divergence.counterfactual_baseline(q_alternatives, log_pi.exp())
        return counterfactual - self.alpha * gather_actions(log_pi, actions)

    # -- the steps ------------------------------------------------------------------------------
    def critic_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.log_policy(self.actor, episodes), self.log_rho(episodes))
        taken = episodes.actions[:, steps]
        q_values, attention_logits = self.critic(self.histories(self.critic, episodes)[:, steps], taken)
        q_taken = gather_actions(q_values, taken)
        critic_loss = masked_mean((q_taken - targets) ** 2, episodes.step_mask)
        regularizer = self.attention_regularization * self.attention_heads * (attention_logits**2).mean() if attention_logits.numel() else 0.0
        self.critic_optimizer_step(critic_loss + regularizer)
        self.record(
            **{
                "loss/critic": critic_loss,
                "critic/q_taken": masked_mean(q_taken.detach(), episodes.step_mask),
                "critic/target": masked_mean(targets, episodes.step_mask),
            }
        )

    def actor_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        logits = self.unroll(self.actor, episodes)
        log_pi = self.policy_log_probs(logits, episodes.available, "explore")
        log_rho = self.log_rho(episodes)
        actions = self.actor_actions(episodes, log_pi.detach())
        with torch.no_grad():  # the critic as it is now (after its step, in MAAC's order), encoder included
            q_alternatives, _ = self.critic(self.histories(self.critic, episodes)[:, steps], actions)
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        logit_penalty = self.policy_regularization * masked_mean((logits[:, steps] ** 2).mean(-1), episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss + logit_penalty)
        self.record(**{"loss/actor": actor_loss, "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask)})


class MaacDmac(DivergenceRegularized, Maac):
    """MAAC+DMAC: MAAC's networks; its target policy becomes rho; DMAC's critic and actor updates.

    Args:
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...) and MAAC's
            (``tau`` is rho's rate; the target critic's is ``target_critic_tau``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(alpha=0.0, **kwargs)  # no entropy term: the divergence regulariser replaces it

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        return self.regularized_targets(episodes, self.target_values(episodes, actions), actions, log_pi, log_rho)

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)
