"""QMIX (Rashid et al., 2018) and QMIX+DMAC (paper App. C.1).

QMIX: GRU agent Q-networks, epsilon-greedy exploration (linear decay), a monotonic hypernetwork
mixer (embed 32, absolute weights, state-conditioned biases), double-Q max targets from target
networks copied every ``target_update_interval`` collected episodes (PyMARL: 200). Greedy evaluation.

QMIX+DMAC: the individual Q-networks stay as the critic, but without a max in the target the mixer
need not be monotonic: an MLP over ``[Q_1..Q_n, s]`` (hidden ``mixing_embed_dim``, 32). Policies pi
and target policies rho are added; the critic learns the divergence-regularised TD(lambda) targets
with the stored next action, and the actor the counterfactual advantage computed through the mixer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import ActMode, MultiAgentModule
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import MLPMixer, MonotonicMixer
from dmac_lightning.networks.mixers import counterfactual_q
from dmac_lightning.policy import epsilon_greedy, gather_actions, greedy
from dmac_lightning.returns import lambda_returns, masked_mean
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import check_positive_int, check_range


class Qmix(MultiAgentModule):
    """QMIX as published (value-based, off-policy).

    Args:
        td_lambda: TD(lambda) factor of the targets (PyMARL's QMIX: one-step, 0).
        mixing_embed_dim: width of the mixer's hidden layer.
        hypernet_dim: hidden width of the hypernetworks producing the mixer's weights.
        double_q: choose next actions with the online Q-networks, evaluate them with the targets.
        target_update_interval: copy the Q-networks and mixer into their targets every this many
            collected episodes (PyMARL counts episodes: 200).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: epsilon-greedy schedule over env steps.
        **kwargs: shared settings of :class:`MultiAgentModule` (``lr_critic`` trains the Q-networks).
    """

    evaluates_greedily = True
    target_networks = ("agent_q", "mixer")

    def __init__(
        self,
        td_lambda: float = 0.0,
        mixing_embed_dim: int = 32,
        hypernet_dim: int = 64,
        double_q: bool = True,
        target_update_interval: int = 200,
        epsilon_start: float = 1.0,
        epsilon_finish: float = 0.05,
        epsilon_anneal_steps: int = 50_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon_start=epsilon_start, epsilon_finish=epsilon_finish, epsilon_anneal_steps=epsilon_anneal_steps, **kwargs)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_positive_int("model.mixing_embed_dim", mixing_embed_dim)
        check_positive_int("model.target_update_interval", target_update_interval)
        self.td_lambda, self.mixing_embed_dim, self.hypernet_dim, self.double_q = td_lambda, mixing_embed_dim, hypernet_dim, double_q
        self.target_update_interval = target_update_interval

    def build(self, info: EnvInfo) -> None:
        self.agent_q = self.make_agent_network()
        self.mixer = self.make_mixer(info)
        self.target_agent_q = freeze(copy.deepcopy(self.agent_q))
        self.target_mixer = freeze(copy.deepcopy(self.mixer))

    def make_mixer(self, info: EnvInfo) -> nn.Module:
        return MonotonicMixer(info.state_dim, info.n_agents, self.mixing_embed_dim, self.hypernet_dim)

    @property
    def acting_network(self) -> nn.Module:
        return self.agent_q

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.rmsprop([*self.agent_q.parameters(), *self.mixer.parameters()], self.lr_critic)]

    def configure_callbacks(self) -> list:
        return hard_target_updates(*self.target_networks, every_n_episodes=self.target_update_interval)

    def choose_actions(self, outputs: torch.Tensor, available: torch.Tensor, mode: ActMode) -> torch.Tensor:
        # A greedy policy has nothing to sample: evaluation is greedy in both modes.
        return epsilon_greedy(outputs, available, self.epsilon) if mode == "explore" else greedy(outputs, available)

    # -- critic ---------------------------------------------------------------------------------
    def critic_targets(self, episodes: EpisodeBatch, q_values: torch.Tensor) -> torch.Tensor:
        """Double-Q max targets ``[B, T]`` (``q_values``: the online agent Q-values, for double Q)."""
        target_q_values = self.unroll(self.target_agent_q, episodes)
        chooser = q_values if self.double_q else target_q_values
        next_actions = greedy(chooser, episodes.available)
        next_q_tot = self.target_mixer(gather_actions(target_q_values, next_actions), episodes.state)[:, 1:]
        return lambda_returns(episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q_tot, self.gamma, self.td_lambda)

    def agent_q_values(self, episodes: EpisodeBatch) -> torch.Tensor:
        """The agent Q-networks over ``episodes`` ``[B, L, n, A]``, with their graph (the critic's input)."""
        return self.unroll(self.agent_q, episodes)

    def critic_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        q_values = self.agent_q_values(episodes)
        q_tot = self.mixer(gather_actions(q_values[:, steps], episodes.actions[:, steps]), episodes.state[:, steps])
        with torch.no_grad():
            targets = self.critic_targets(episodes, q_values.detach())
        critic_loss = masked_mean((q_tot - targets) ** 2, episodes.joint_step_mask)
        self.critic_optimizer_step(critic_loss)
        self.record(
            **{
                "loss/critic": critic_loss,
                "critic/q_taken": masked_mean(q_tot.detach(), episodes.joint_step_mask),
                "critic/target": masked_mean(targets, episodes.joint_step_mask),
                "train/epsilon": self.epsilon,
            }
        )


class QmixDmac(DivergenceRegularized, Qmix):
    """QMIX+DMAC: QMIX's Q-networks as a critic under an MLP mixer, plus policies pi and rho.

    Args:
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        **kwargs: the +DMAC settings of :class:`DivergenceRegularized` (omega, tau, ...) and QMIX's
            (``mixing_embed_dim`` is the MLP mixer's hidden width, paper: 32).
    """

    def __init__(self, td_lambda: float = 0.8, **kwargs: Any) -> None:
        # Not used: the mixer is an MLP (no hypernetworks), targets take no max, the targets are soft.
        super().__init__(td_lambda=td_lambda, hypernet_dim=1, double_q=False, target_update_interval=1, **kwargs)
        self._agent_q_unroll: tuple[EpisodeBatch, torch.Tensor] | None = None

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        super().build(info)

    def make_mixer(self, info: EnvInfo) -> nn.Module:
        return MLPMixer(info.state_dim, info.n_agents, self.mixing_embed_dim)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [*super().configure_optimizers(), self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def critic_targets(self, episodes: EpisodeBatch, q_values: torch.Tensor) -> torch.Tensor:
        log_pi, log_rho = self.log_policy(self.actor, episodes), self.log_rho(episodes)
        actions = episodes.bootstrap_actions(log_pi)
        values = self.target_mixer(gather_actions(self.unroll(self.target_agent_q, episodes), actions), episodes.state)
        return self.regularized_targets(episodes, values, actions, log_pi, log_rho)

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        """Counterfactual advantage with ``q_alternatives = Q_tot(s, (a'_i, a_-i))`` from the mixer."""
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)

    def agent_q_values(self, episodes: EpisodeBatch) -> torch.Tensor:
        # The actor step, which runs first, unrolled the Q-networks over these episodes with the same weights
        # (the actor's optimiser does not touch them): the critic reuses that unroll and its graph.
        unrolled, self._agent_q_unroll = self._agent_q_unroll, None
        if unrolled is not None and unrolled[0] is episodes:
            return unrolled[1]
        return super().agent_q_values(episodes)

    def actor_step(self, episodes: EpisodeBatch) -> None:
        steps = episodes.decisions
        log_pi, log_rho = self.log_policy(self.actor, episodes), self.log_rho(episodes)
        actions = self.actor_actions(episodes, log_pi.detach())
        q_values = super().agent_q_values(episodes)
        self._agent_q_unroll = (episodes, q_values)
        with torch.no_grad():
            individual = q_values.detach()[:, steps]
            q_alternatives = counterfactual_q(self.mixer, individual, actions, episodes.state[:, steps])
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss)
        self.record(**{"loss/actor": actor_loss, "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask)})
