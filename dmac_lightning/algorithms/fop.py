"""FOP (Zhang et al., 2021) and FOP+DMAC (paper Sec. 5.2, App. C.1).

Both use FOP's networks as the authors' FOP baseline has them: the agent GRU policy; two per-agent
soft critics ``Q_i(tau_i, .)`` (GRU networks over observation, last action and agent id) each with its
own FOP mixer ``Q_tot = sum_i w_i Q_i + V(s) + sum_i (lambda_i(s,a) - 1) w_i (Q_i - V_i)`` (IGO,
attention weights ``w_i``, whose logits are regularised), double critics (the minimum is used), and
target critics.

FOP: the plain softmax policy (no epsilon); entropy temperature ``alpha`` decayed linearly;
individual values ``V_i = alpha logsumexp(Q_i / alpha)``; critic TD(lambda) targets from next actions
sampled from the current policy, minus ``alpha mean_i log pi_i(a'_i)``; actor ``sum_a pi_i(a) (alpha
log pi_i(a) - Q_i(a))``; the actor first, then the critic. Greedy evaluation.

FOP+DMAC: every ``alpha log pi_i`` becomes ``omega log(pi_i / rho_i)``: ``V_i = omega log sum_a
rho_i(a) exp(Q_i(a) / omega)``, the critic learns DMAC's regularised TD(lambda) targets with the
stored next action, and the actor minimises ``sum_a pi_i(a) (omega log(pi_i(a)/rho_i(a)) - Q_i(a))``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import AgentRNN, FOPMixer, agent_input_dim
from dmac_lightning.policy import gather_actions, linear_schedule, sample
from dmac_lightning.returns import lambda_returns, masked_mean
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import INF, check_positive_int, check_range


class Fop(MultiAgentModule):
    """FOP as published (off-policy, entropy-regularised, IGO mixer).

    Args:
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        alpha_start, alpha_finish, alpha_anneal_steps: linear decay of the entropy temperature over
            env steps (FOP: ``max(0.05, 0.5 - t / 200000)``, i.e. 0.5 -> 0.05 over 90k steps).
        critic_hidden_dim: width of each per-agent GRU critic.
        mixer_heads: heads of the mixer's attention and lambda weights.
        mixing_embed_dim: hidden width of the mixer's V(s), and of its attention queries and keys.
        attention_regularization: weight of the mean squared attention logits (per head) in the critic loss.
        target_update_interval: copy critics and mixers into their targets every this many collected
            episodes (FOP, like PyMARL, counts episodes: 200).
        **kwargs: shared settings of :class:`MultiAgentModule` (the epsilon_* exploration is off: FOP
            samples from the plain softmax).
    """

    evaluates_greedily = True
    target_networks = ("critics", "mixers")
    update_order = ("actor", "critic")

    def __init__(
        self,
        td_lambda: float = 0.8,
        alpha_start: float = 0.5,
        alpha_finish: float = 0.05,
        alpha_anneal_steps: int = 90_000,
        critic_hidden_dim: int = 64,
        mixer_heads: int = 4,
        mixing_embed_dim: int = 32,
        attention_regularization: float = 1e-3,
        target_update_interval: int = 200,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_range("model.alpha_start", alpha_start, 0.0, INF, low_open=True)
        check_range("model.alpha_finish", alpha_finish, 0.0, INF, low_open=True)
        check_positive_int("model.target_update_interval", target_update_interval)
        check_positive_int("model.critic_hidden_dim", critic_hidden_dim)
        check_range("model.attention_regularization", attention_regularization, 0.0, INF)
        self.td_lambda = td_lambda
        self.alpha_schedule = (alpha_start, alpha_finish, alpha_anneal_steps)
        self.critic_hidden_dim, self.mixer_heads, self.mixing_embed_dim = critic_hidden_dim, mixer_heads, mixing_embed_dim
        self.attention_regularization = attention_regularization
        self.target_update_interval = target_update_interval

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        input_dim = agent_input_dim(info.obs_dim, info.n_agents, info.n_actions, self.last_action_input)
        self.critics = nn.ModuleList(AgentRNN(input_dim, info.n_actions, self.critic_hidden_dim) for _ in range(2))
        self.mixers = nn.ModuleList(
            FOPMixer(info.state_dim, info.obs_dim, info.n_agents, info.n_actions, self.mixer_heads, self.mixing_embed_dim,
                     self.mixing_embed_dim)
            for _ in range(2)
        )
        self.target_critics = freeze(copy.deepcopy(self.critics))
        self.target_mixers = freeze(copy.deepcopy(self.mixers))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic = self.rmsprop([*self.critics.parameters(), *self.mixers.parameters()], self.lr_critic)
        return [critic, self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_updates(*self.target_networks, every_n_episodes=self.target_update_interval)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if any(".queries." in key for key in checkpoint.get("state_dict", {})):
            raise ValueError(
                f"this {type(self).__name__} checkpoint's mixers share one query layer among their attention heads, "
                "as before 2026-12-06; today's have one per head, as the "
                "published FOP: the weights cannot be carried over; train it again"
            )
        super().on_load_checkpoint(checkpoint)

    @property
    def alpha(self) -> float:
        """The entropy temperature now."""
        return linear_schedule(*self.alpha_schedule, step=self.env_steps)

    def individual_q(self, critics: nn.ModuleList, episodes: EpisodeBatch) -> list[torch.Tensor]:
        """``Q_i(tau_i, .)`` of both critics over whole stored episodes, each ``[B, L, n, A]``."""
        return [self.unroll(critic, episodes) for critic in critics]

    # -- hooks that differ between FOP and FOP+DMAC ---------------------------------------------
    def soft_values(self, q_values: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        return divergence.soft_value(q_values, self.alpha)

    def actor_objective(self, log_pi: torch.Tensor, q_values: torch.Tensor, log_rho: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """``mean_{i,t} sum_a pi_i(a) (alpha log pi_i(a) - Q_i(a))`` (SAC for discrete actions)."""
        per_agent = (log_pi.exp() * (self.alpha * log_pi - q_values)).sum(-1)
        return masked_mean(per_agent, mask)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        next_actions = sample(log_pi)  # FOP: a' ~ the current policy
        next_q_tot = self.target_values(episodes, next_actions, log_rho)
        returns = lambda_returns(
            episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q_tot[:, 1:], self.gamma, self.td_lambda
        )
        # As published: the entropy of the next step is subtracted after the TD(lambda) recursion.
        return returns - self.alpha * gather_actions(log_pi, next_actions)[:, 1:].mean(-1)

    # -- shared machinery -----------------------------------------------------------------------
    def mixed_q(
        self, critics: nn.ModuleList, mixers: nn.ModuleList, episodes: EpisodeBatch, actions: torch.Tensor,
        log_rho: torch.Tensor | None, steps: slice,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(Q_tot, attention logits)`` of each critic/mixer pair at ``actions`` over ``steps``."""
        state, observation = episodes.state[:, steps], episodes.observation[:, steps]
        rho = None if log_rho is None else log_rho[:, steps]
        totals = []
        for q_values, mixer in zip(self.individual_q(critics, episodes), mixers):
            q_values = q_values[:, steps]
            totals.append(mixer(gather_actions(q_values, actions), self.soft_values(q_values, rho), state, actions, observation))
        return totals

    def target_values(self, episodes: EpisodeBatch, actions: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        """The smaller of the two target ``Q_tot`` at ``actions`` for every slot ``[B, L]``."""
        (first, _), (second, _) = self.mixed_q(self.target_critics, self.target_mixers, episodes, actions, log_rho, slice(None))
        return torch.minimum(first, second)

    # -- the steps (FOP: the actor first, then the critic with the updated policy) --------------
    def actor_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        log_rho = self.log_rho(episodes)
        log_pi = self.log_policy(self.actor, episodes)
        with torch.no_grad():
            q_values = torch.minimum(*self.individual_q(self.critics, episodes))[:, steps]
        actor_loss = self.actor_objective(log_pi[:, steps], q_values, None if log_rho is None else log_rho[:, steps], episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss)
        pi_log_pi = (log_pi.exp() * log_pi).detach().sum(-1)[:, steps]
        self.record(
            **{
                "loss/actor": actor_loss,
                "actor/entropy": masked_mean(-pi_log_pi, episodes.step_mask),
                "train/alpha": self.alpha,
                "train/epsilon": self.epsilon,
            }
        )

    def critic_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        log_rho = self.log_rho(episodes)
        with torch.no_grad():
            targets = self.critic_targets(episodes, self.log_policy(self.actor, episodes), log_rho)
        mixed = self.mixed_q(self.critics, self.mixers, episodes, episodes.actions[:, steps], log_rho, steps)
        critic_loss = sum(masked_mean((q_tot - targets) ** 2, episodes.joint_step_mask) for q_tot, _ in mixed)
        # FOP's attention regulariser: per head, the mean squared logit (over real steps and agents)
        attention = sum(masked_mean(logits**2, episodes.step_mask.unsqueeze(-1)) * logits.shape[-2] for _, logits in mixed)
        self.critic_optimizer_step(critic_loss + self.attention_regularization * attention)
        self.record(
            **{
                "loss/critic": critic_loss,
                "critic/q_taken": masked_mean(mixed[0][0].detach(), episodes.joint_step_mask),
                "critic/target": masked_mean(targets, episodes.joint_step_mask),
            }
        )


class FopDmac(DivergenceRegularized, Fop):
    """FOP+DMAC: FOP's networks with every ``alpha log pi_i`` replaced by ``omega log(pi_i / rho_i)``.

    ``omega`` must be > 0: it is also the soft value's temperature (logged as ``train/alpha``).

    Args:
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...) and FOP's.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Not used: omega takes the entropy temperature's place; the target critic follows target_critic_*.
        super().__init__(alpha_start=1.0, alpha_finish=1.0, alpha_anneal_steps=1, target_update_interval=1, **kwargs)
        if self.omega <= 0:
            raise ValueError(f"model.omega must be > 0 for FopDmac (it is the soft value's temperature), got {self.omega!r}")

    @property
    def alpha(self) -> float:
        return self.omega

    def soft_values(self, q_values: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        return divergence.soft_value(q_values, self.omega, log_rho)

    def actor_objective(self, log_pi: torch.Tensor, q_values: torch.Tensor, log_rho: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        return divergence.expected_regularized_loss(log_pi, q_values, self.omega, log_rho, mask)

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        return self.regularized_targets(episodes, self.target_values(episodes, actions, log_rho), actions, log_pi, log_rho)
