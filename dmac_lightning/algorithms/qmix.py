"""QMIX (Rashid et al., 2018) and QMIX+DMAC (paper App. C.1).

QMIX: GRU agent Q-networks, epsilon-greedy exploration (linear decay), a monotonic hypernetwork
mixer (embed 32, absolute weights, state-conditioned biases), double-Q max targets from target
networks copied every ``target_update_interval`` collected episodes (PyMARL: 200). Greedy evaluation.

QMIX+DMAC: the individual Q-networks stay as the critic, but without a max in the target the mixer
need not be monotonic: an MLP over ``[Q_1..Q_n, s]`` (hidden 32). Policies pi and target policies rho
are added; the critic learns the divergence-regularised TD(lambda) targets with the stored next
action, and the actor the counterfactual advantage computed through the mixer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from tensordict import TensorDictBase

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import (
    ActMode,
    MultiAgentModule,
    check_range,
    dmac_callbacks,
    freeze,
    hard_target_callbacks,
)
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import MLPMixer, MonotonicMixer
from dmac_lightning.networks.mixers import counterfactual_q
from dmac_lightning.policy import epsilon_greedy, gather_actions, greedy, sample
from dmac_lightning.returns import lambda_returns, masked_mean


class Qmix(MultiAgentModule):
    """QMIX as published (value-based, off-policy).

    Args:
        mixing_embed_dim: width of the mixer's hidden layer.
        hypernet_dim: hidden width of the hypernetworks producing the mixer's weights.
        double_q: choose next actions with the online Q-networks, evaluate them with the targets.
        target_update_interval: copy the Q-networks and mixer into their targets every this many
            collected episodes (PyMARL counts episodes: 200).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: epsilon-greedy schedule over env steps.
        **kwargs: shared settings of :class:`MultiAgentModule` (``lr_critic`` trains the Q-networks).
    """

    evaluates_greedily = True

    def __init__(
        self,
        mixing_embed_dim: int = 32,
        hypernet_dim: int = 64,
        double_q: bool = True,
        target_update_interval: int = 200,
        epsilon_start: float = 1.0,
        epsilon_finish: float = 0.05,
        epsilon_anneal_steps: int = 50_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if target_update_interval < 1:
            raise ValueError(f"model.target_update_interval must be >= 1, got {target_update_interval!r}")
        self.save_hyperparameters()
        self.mixing_embed_dim, self.hypernet_dim, self.double_q = mixing_embed_dim, hypernet_dim, double_q
        self.target_update_interval = target_update_interval
        self.explore_with_epsilon(epsilon_start, epsilon_finish, epsilon_anneal_steps)

    def build(self, info: EnvInfo) -> None:
        self.agent_q = self.make_agent_network()
        self.mixer = MonotonicMixer(info.state_dim, info.n_agents, self.mixing_embed_dim, self.hypernet_dim)
        self.target_agent_q = freeze(copy.deepcopy(self.agent_q))
        self.target_mixer = freeze(copy.deepcopy(self.mixer))

    @property
    def acting_network(self):
        return self.agent_q

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.rmsprop([*self.agent_q.parameters(), *self.mixer.parameters()], self.lr_critic)

    def configure_callbacks(self) -> list:
        return hard_target_callbacks("agent_q", "mixer", every_n_episodes=self.target_update_interval)

    def choose_actions(self, outputs: torch.Tensor, available: torch.Tensor, mode: ActMode) -> torch.Tensor:
        # A greedy policy has nothing to sample: evaluation is greedy in both modes.
        return epsilon_greedy(outputs, available, self.epsilon) if mode == "explore" else greedy(outputs, available)

    def update(self, batch: TensorDictBase) -> None:
        episodes = self.episode_batch(batch)
        steps = slice(0, episodes.steps)
        q_values = self.unroll(self.agent_q, episodes)  # [B, L, n, A]
        q_tot = self.mixer(gather_actions(q_values[:, steps], episodes.actions[:, steps]), episodes.state[:, steps])
        with torch.no_grad():
            target_q_values = self.unroll(self.target_agent_q, episodes)
            chooser = q_values.detach() if self.double_q else target_q_values
            next_actions = greedy(chooser, episodes.available)
            next_q_tot = self.target_mixer(gather_actions(target_q_values, next_actions), episodes.state)[:, 1:]
            targets = lambda_returns(
                episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q_tot, self.gamma, 0.0
            )
        loss = masked_mean((q_tot - targets) ** 2, episodes.joint_step_mask)
        self.optimizer_step(self.optimizers(), loss)
        self.record(
            **{
                "loss/q": loss,
                "critic/q_taken": masked_mean(q_tot.detach(), episodes.joint_step_mask),
                "critic/target": masked_mean(targets, episodes.joint_step_mask),
                "train/epsilon": self.epsilon,
            }
        )


class QmixDmac(MultiAgentModule):
    """QMIX+DMAC: QMIX's Q-networks as a critic under an MLP mixer, plus policies pi and rho.

    Args:
        omega: regularisation coefficient, >= 0.
        tau: soft-update rate of rho, in (0, 1].
        target_critic_tau: soft-update rate of the target Q-networks and mixer (default ``tau``).
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        mixer_hidden_dim: hidden width of the MLP mixer (paper: 32).
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    def __init__(
        self,
        omega: float = 0.2,
        tau: float = 0.01,
        target_critic_tau: float | None = None,
        td_lambda: float = 0.8,
        mixer_hidden_dim: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("td_lambda", td_lambda, 0.0, 1.0)
        self.save_hyperparameters()
        self.regularize_with_divergence(omega, tau, target_critic_tau)
        self.td_lambda, self.mixer_hidden_dim = td_lambda, mixer_hidden_dim

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.add_target_policy()
        self.agent_q = self.make_agent_network()
        self.mixer = MLPMixer(info.state_dim, info.n_agents, self.mixer_hidden_dim)
        self.target_agent_q = freeze(copy.deepcopy(self.agent_q))
        self.target_mixer = freeze(copy.deepcopy(self.mixer))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic = self.rmsprop([*self.agent_q.parameters(), *self.mixer.parameters()], self.lr_critic)
        return [critic, self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return dmac_callbacks(self.tau, self.target_critic_tau, "agent_q", "mixer")

    def advantage(
        self, q_alternatives: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        """Counterfactual advantage with ``q_alternatives = Q_tot(s, (a'_i, a_-i))`` from the mixer."""
        return divergence.counterfactual_advantage_at(q_alternatives, actions, log_pi, log_rho, self.omega)

    def update(self, batch: TensorDictBase) -> None:
        critic_optimizer, actor_optimizer = self.optimizers()
        episodes = self.episode_batch(batch)
        steps = slice(0, episodes.steps)
        log_pi = self.log_policy(self.actor, episodes)
        log_rho = self.log_target_policy(episodes)

        q_values = self.unroll(self.agent_q, episodes)
        q_tot = self.mixer(gather_actions(q_values[:, steps], episodes.actions[:, steps]), episodes.state[:, steps])
        with torch.no_grad():
            next_actions = self.bootstrap_actions(episodes, log_pi.detach())
            target_q = gather_actions(self.unroll(self.target_agent_q, episodes), next_actions)
            next_q_tot = self.target_mixer(target_q, episodes.state)[:, 1:]
            log_ratio = divergence.joint_log_ratio(gather_actions(log_pi, next_actions), gather_actions(log_rho, next_actions))
            targets = divergence.critic_targets(
                episodes.reward, episodes.terminated, episodes.joint_step_mask, next_q_tot, log_ratio[:, 1:],
                self.gamma, self.omega, self.td_lambda,
            )
        critic_loss = masked_mean((q_tot - targets) ** 2, episodes.joint_step_mask)
        self.optimizer_step(critic_optimizer, critic_loss)

        with torch.no_grad():
            actions = sample(log_pi[:, steps].detach())
            individual = self.unroll(self.agent_q, episodes)[:, steps]
            q_alternatives = counterfactual_q(self.mixer, individual, actions, episodes.state[:, steps])
        advantage = self.advantage(q_alternatives, actions, log_pi[:, steps].detach(), log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(actor_optimizer, actor_loss)

        kl = divergence.kl_divergence(log_pi[:, steps].detach(), log_rho[:, steps])
        self.record(
            **{
                "loss/critic": critic_loss,
                "loss/actor": actor_loss,
                "dmac/kl_pi_rho": masked_mean(kl, episodes.step_mask),
                "critic/q_taken": masked_mean(q_tot.detach(), episodes.joint_step_mask),
                "critic/target": masked_mean(targets, episodes.joint_step_mask),
                "actor/advantage_abs": masked_mean(advantage.abs(), episodes.step_mask),
            }
        )
