"""The one home of what every +DMAC variant shares (paper Sec. 4.4-4.6, Alg. 1).

``divergence`` knows the formulas; this module wires them to stored episodes and to a family's
networks. A +DMAC variant is written the same way in all five families::

    class ComaDmac(DivergenceRegularized, Coma):
        '''What changes (docstring).'''

        def __init__(self, <settings whose default differs from the baseline's>, **kwargs) -> None:
            super().__init__(<those settings>, <baseline settings the variant does not use, pinned>, **kwargs)

        def critic_targets(self, episodes, log_pi, log_rho):      # regularised critic targets
            actions = episodes.bootstrap_actions(log_pi)
            return self.regularized_targets(episodes, <the family's target values at actions>, actions, log_pi, log_rho)

        def <the family's actor hook>(...):                       # regularised actor
            return divergence.<the family's advantage or objective>(..., self.omega)

:class:`DivergenceRegularized` comes first in the bases, so it adds, on top of the baseline:

* the settings ``omega``, ``tau`` and ``target_critic_tau``, checked at config time, and no epsilon
  exploration by default;
* rho (``target_actor``), a frozen copy of the policy made right after the family builds its
  networks, so it starts equal to pi, and its log-probabilities over stored histories (``log_rho``);
* :meth:`regularized_targets`: the divergence-regularised TD(lambda) target from the target values at
  the bootstrap actions, which also records ``dmac/kl_pi_rho``;
* the order of Algorithm 1: the actor step, then rho soft-updated with ``tau``, then the critic step
  (with the updated pi and rho);
* the target critic rule: each of the family's ``target_networks`` soft-updated with
  ``target_critic_tau`` after every update (the paper), or copied every ``target_critic_copy_every``
  critic optimiser steps (the authors' code: 200);
* actor actions drawn from the current policies (Sec. 4.5), off-policy data (a replay buffer),
  and evaluation by sampling (App. C.3).

The family's ``update`` is not touched: it calls the hooks above.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch

from dmac_lightning import divergence
from dmac_lightning.algorithms.base import ActMode, MultiAgentModule
from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.networks import AgentRNN
from dmac_lightning.policy import gather_actions, sample
from dmac_lightning.returns import masked_mean
from dmac_lightning.targets import TargetNetworkUpdate, freeze, hard_target_updates, soft_target_updates, soft_update
from dmac_lightning.validation import INF, check_positive_int, check_range


class DivergenceRegularized(MultiAgentModule):
    """Makes a baseline family its +DMAC variant (see the module docstring for the pattern).

    Args:
        omega: regularisation coefficient, >= 0 (paper: 0.2 on the stochastic game, 0.01 on SMAC).
        tau: soft-update rate of the target policy rho after every actor step, in (0, 1].
        target_critic_tau: soft-update rate of the target critic networks after every update, in (0, 1];
            ``tau`` when None (the paper, Alg. 1).
        target_critic_copy_every: instead, copy the critic networks into their targets every this many
            critic optimiser steps (the authors' code: 200, its critic stepping once per timestep).
        epsilon_start, epsilon_finish, epsilon_anneal_steps: optional epsilon-uniform exploration on top
            of the policy (off by default: the divergence regulariser explores).
        **kwargs: the baseline family's settings.
    """

    data_regime: ClassVar[Literal["off_policy", "on_policy", "mixed"]] = "off_policy"
    evaluates_greedily: ClassVar[bool] = False
    update_order: ClassVar[tuple[str, ...]] = ("actor", "critic")  # Alg. 1 and the authors' code

    def __init__(
        self,
        omega: float = 0.2,
        tau: float = 0.01,
        target_critic_tau: float | None = None,
        target_critic_copy_every: int | None = None,
        epsilon_start: float = 0.0,
        epsilon_finish: float = 0.0,
        epsilon_anneal_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon_start=epsilon_start, epsilon_finish=epsilon_finish, epsilon_anneal_steps=epsilon_anneal_steps, **kwargs)
        check_range("model.omega", omega, 0.0, INF)
        check_range("model.tau", tau, 0.0, 1.0, low_open=True)
        if target_critic_tau is not None:
            check_range("model.target_critic_tau", target_critic_tau, 0.0, 1.0, low_open=True)
        if target_critic_copy_every is not None:
            check_positive_int("model.target_critic_copy_every", target_critic_copy_every)
            if target_critic_tau is not None:
                raise ValueError("model.target_critic_tau and model.target_critic_copy_every: give at most one (soft or hard target critic)")
        self.omega, self.tau = omega, tau
        self.target_critic_tau = tau if target_critic_tau is None else target_critic_tau
        self.target_critic_copy_every = target_critic_copy_every

    def build(self, info: EnvInfo) -> None:
        super().build(info)
        if "target_actor" not in self._modules:  # MAAC's own target policy becomes rho
            self.target_actor = freeze(copy.deepcopy(self.actor))

    @property
    def acting_network(self) -> AgentRNN:
        return self.actor

    def choose_actions(self, outputs: torch.Tensor, available: torch.Tensor, mode: ActMode) -> torch.Tensor:
        # Every variant acts with its stochastic policy pi, also where the baseline acts on Q (QMIX).
        return MultiAgentModule.choose_actions(self, outputs, available, mode)

    def configure_callbacks(self) -> list[TargetNetworkUpdate]:
        if self.target_critic_copy_every is not None:
            return hard_target_updates(*self.target_networks, every_n_critic_steps=self.target_critic_copy_every)
        return soft_target_updates(self.target_critic_tau, *self.target_networks)

    def after_actor_step(self) -> None:
        soft_update(self.target_actor, self.actor, self.tau)  # rho follows pi after every actor step

    def log_rho(self, episodes: EpisodeBatch) -> torch.Tensor:
        """``log rho`` over stored histories, mixed with the same exploration epsilon as the ``log pi`` the
        updates use, so that the divergence vanishes when rho = pi."""
        with torch.no_grad():
            return self.log_policy(self.target_actor, episodes)

    def actor_actions(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        """Actions for the actor loss: drawn from the current policies at the stored histories (Sec. 4.5)."""
        return sample(log_pi[:, episodes.decisions])

    def regularized_targets(
        self, episodes: EpisodeBatch, values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor
    ) -> torch.Tensor:
        """DMAC's critic targets (Sec. 4.4, Prop. 4): TD(``td_lambda``) on ``r - gamma omega log pi/rho(a')``.

        ``values``: the target critic at ``actions`` for every slot, ``[B, L]`` (a joint value) or
        ``[B, L, n]`` (one per agent, as COMA's and MAAC's critics give); ``actions`` ``[B, L, n]``:
        the bootstrap actions (stored where the episode went on). Also records ``dmac/kl_pi_rho``.
        """
        next_log_ratio = divergence.joint_log_ratio(gather_actions(log_pi, actions), gather_actions(log_rho, actions))[:, 1:]
        reward, terminated, mask = episodes.reward, episodes.terminated, episodes.joint_step_mask
        if values.dim() == 3:  # one value per agent: the joint quantities broadcast over agents
            reward, terminated, mask, next_log_ratio = reward[..., None], terminated[..., None], episodes.step_mask, next_log_ratio[..., None]
        targets = divergence.critic_targets(
            reward, terminated, mask, values[:, 1:], next_log_ratio, self.gamma, self.omega, self.td_lambda
        )
        steps = episodes.decisions
        self.record(**{"dmac/kl_pi_rho": masked_mean(divergence.kl_divergence(log_pi[:, steps], log_rho[:, steps]), episodes.step_mask)})
        return targets
