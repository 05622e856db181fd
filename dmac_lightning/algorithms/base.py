"""What every algorithm shares: acting in the env, unrolling stored episodes, optimising, logging.

An algorithm subclasses :class:`MultiAgentModule`, builds its networks in ``build`` (sizes come
from the env, known only after the data module's ``setup``), names the network that acts, and writes
``update(batch)``: one round of manual optimisation on a batch of episodes (a critic step, then an
actor step).

``training_step`` takes the ``dataloader_iter`` so that Lightning does not prefetch: fetching a
batch runs the collector, and it must run with the weights of the *previous* update, not one update
behind (which prefetching would cause).
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, ClassVar, Iterator, Literal

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch import nn
from torch.nn import functional as F
from torchrl.data import Composite, Unbounded

from callbacks.target_update import TargetNetworkUpdate, target_policy_update
from dmac_lightning.envs.common import ACTION, ACTION_MASK, OBSERVATION, STATE, EnvInfo
from dmac_lightning.networks import AgentRNN, agent_input_dim, agent_inputs, previous_actions_one_hot
from dmac_lightning.policy import epsilon_mixed_log_probs, greedy, linear_schedule, masked_log_softmax, sample

HIDDEN = ("agents", "rnn_hidden")
LAST_ACTION = ("agents", "last_action")
ActMode = Literal["explore", "sample", "greedy"]


def check_range(field: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` lies in the interval."""
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if isinstance(value, bool) or not isinstance(value, (int, float)) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"model.{field} must be in {interval}, got {value!r}")


class EpisodeBatch:
    """Named views of a sampled batch of padded episodes ``[B, L, ...]`` (``L``: the longest episode + 1)."""

    def __init__(self, batch: TensorDictBase, n_actions: int) -> None:
        self.observation = batch.get(OBSERVATION)  # [B, L, n, obs]
        self.available = batch.get(ACTION_MASK)  # [B, L, n, A]
        self.state = batch.get(STATE)  # [B, L, state]
        self.actions = batch.get(ACTION)  # [B, L, n]
        self.reward = batch.get("reward")[..., :-1, 0]  # [B, T]
        self.terminated = batch.get("terminated")[..., :-1, 0].float()  # [B, T]
        self.filled = batch.get("filled")  # [B, L]: an action was taken at t
        self.last_actions = previous_actions_one_hot(self.actions, n_actions)  # [B, L, n, A]

    @property
    def steps(self) -> int:
        """``T``: the decision steps; slot ``T`` only holds the bootstrap observation."""
        return self.reward.shape[1]

    @property
    def step_mask(self) -> torch.Tensor:
        """``[B, T, 1]``: real steps, broadcast over agents."""
        return self.filled[:, :-1, None]

    @property
    def joint_step_mask(self) -> torch.Tensor:
        """``[B, T]``: real steps, for joint quantities (Q_tot, targets)."""
        return self.filled[:, :-1]


class MultiAgentModule(pl.LightningModule):
    """Shared plumbing; see the module docstring.

    Args:
        gamma: discount factor in [0, 1].
        lr_actor: learning rate of the policy networks.
        lr_critic: learning rate of the critic (or the Q-networks of value-based methods).
        hidden_dim: width of the agent GRU network.
        last_action_input: append the previous action one-hot to each agent's input (PyMARL default).
        grad_clip_norm: clip each optimiser's gradient norm to this (0 disables).
        rmsprop_alpha: RMSprop smoothing constant.
        rmsprop_eps: RMSprop epsilon.
        greedy_evaluation: evaluate with greedy actions instead of sampling; ``None`` uses the
            algorithm's published choice (greedy for QMIX and FOP, sampled for stochastic policies).
    """

    data_regime: ClassVar[Literal["off_policy", "on_policy", "mixed"]] = "off_policy"
    evaluates_greedily: ClassVar[bool] = False

    def __init__(
        self,
        gamma: float = 0.99,
        lr_actor: float = 1e-4,
        lr_critic: float = 1e-3,
        hidden_dim: int = 64,
        last_action_input: bool = True,
        grad_clip_norm: float = 10.0,
        rmsprop_alpha: float = 0.99,
        rmsprop_eps: float = 1e-5,
        greedy_evaluation: bool | None = None,
    ) -> None:
        super().__init__()
        check_range("gamma", gamma, 0.0, 1.0)
        check_range("lr_actor", lr_actor, 0.0, float("inf"), low_open=True)
        check_range("lr_critic", lr_critic, 0.0, float("inf"), low_open=True)
        check_range("grad_clip_norm", grad_clip_norm, 0.0, float("inf"))
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"model.hidden_dim must be an integer >= 1, got {hidden_dim!r}")
        self.automatic_optimization = False
        self.gamma, self.lr_actor, self.lr_critic = gamma, lr_actor, lr_critic
        self.hidden_dim, self.last_action_input = hidden_dim, last_action_input
        self.grad_clip_norm = grad_clip_norm
        self.rmsprop_alpha, self.rmsprop_eps = rmsprop_alpha, rmsprop_eps
        self.greedy_evaluation = self.evaluates_greedily if greedy_evaluation is None else greedy_evaluation
        self.env_info: EnvInfo | None = None
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}
        self.updates = 0
        self.epsilon_schedule: tuple[float, float, int] | None = None

    # -- building -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.env_info is None:
            self.configure_env(self.trainer.datamodule.env_info)
        local_ranks = self.trainer.num_devices
        if self.device.type == "cpu" and local_ranks > 1:
            # Several CPU ranks on one machine: share the cores instead of oversubscribing them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))

    def configure_env(self, info: EnvInfo) -> None:
        """Build the networks for ``info``'s sizes (also usable outside a Trainer, e.g. in tests)."""
        self.env_info = info
        self.build(info)

    def build(self, info: EnvInfo) -> None:
        raise NotImplementedError

    def make_agent_network(self, n_outputs: int | None = None) -> AgentRNN:
        info = self.env_info
        input_dim = agent_input_dim(info.obs_dim, info.n_agents, info.n_actions, self.last_action_input)
        return AgentRNN(input_dim, n_outputs or info.n_actions, self.hidden_dim)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["env_info"] = self.env_info.as_dict() if self.env_info else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("env_info")
        if not saved:
            return
        if self.env_info is None:
            self.configure_env(EnvInfo(**saved))
        elif saved != self.env_info.as_dict():
            raise ValueError(
                f"the checkpoint was trained on an env with {saved}, but this run's env has "
                f"{self.env_info.as_dict()}: resume with the data settings the checkpoint was trained with"
            )

    # -- +DMAC ----------------------------------------------------------------------------------
    def regularize_with_divergence(self, omega: float, tau: float, target_critic_tau: float | None) -> None:
        """Make this a +DMAC variant: coefficient ``omega``, target policy rate ``tau``, target critic
        rate ``target_critic_tau`` (``tau`` when None); validated here, at config time."""
        self.target_critic_tau = check_dmac_settings(omega, tau, target_critic_tau)
        self.omega, self.tau = omega, tau

    def add_target_policy(self) -> None:
        """rho: a frozen copy of the policy network, so it starts equal to pi."""
        self.target_actor = freeze(copy.deepcopy(self.actor))

    def log_target_policy(self, episodes: EpisodeBatch) -> torch.Tensor:
        """``log rho`` over stored histories, mixed with the same exploration epsilon as the ``log pi`` the
        +DMAC updates use, so that the divergence vanishes when rho = pi."""
        with torch.no_grad():
            return self.log_policy(self.target_actor, episodes, "explore")

    # -- acting ---------------------------------------------------------------------------------
    @property
    def acting_network(self) -> AgentRNN:
        """The network whose outputs pick actions (the policy, or QMIX's agent Q-network)."""
        return self.actor

    def carried_state_spec(self, n_envs: int) -> Composite:
        """Per-env state the policy carries between steps (reset to zeros with each episode)."""
        info = self.env_info
        return Composite(
            agents=Composite(
                rnn_hidden=Unbounded(shape=(n_envs, info.n_agents, self.hidden_dim)),
                last_action=Unbounded(shape=(n_envs, info.n_agents, info.n_actions)),
                shape=(n_envs, info.n_agents),
            ),
            shape=(n_envs,),
        )

    def explore_with_epsilon(self, start: float, finish: float, anneal_steps: int) -> None:
        """Exploration weight ``epsilon`` annealed linearly over env steps (mixed into stochastic
        policies as ``(1 - eps) pi + eps uniform``, or epsilon-greedy for value-based ones)."""
        check_range("epsilon_start", start, 0.0, 1.0)
        check_range("epsilon_finish", finish, 0.0, 1.0)
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 1:
            raise ValueError(f"model.epsilon_anneal_steps must be an integer >= 1, got {anneal_steps!r}")
        self.epsilon_schedule = (start, finish, anneal_steps)

    @property
    def epsilon(self) -> float:
        return 0.0 if self.epsilon_schedule is None else linear_schedule(*self.epsilon_schedule, step=self.env_steps)

    def policy_log_probs(self, outputs: torch.Tensor, available: torch.Tensor, mode: ActMode) -> torch.Tensor:
        """Log pi over available actions from the acting network's outputs (stochastic policies);
        while exploring, mixed with epsilon-uniform (COMA's epsilon-bounded softmax)."""
        log_probs = masked_log_softmax(outputs, available)
        return epsilon_mixed_log_probs(log_probs, available, self.epsilon) if mode == "explore" else log_probs

    def choose_actions(self, outputs: torch.Tensor, available: torch.Tensor, mode: ActMode) -> torch.Tensor:
        log_probs = self.policy_log_probs(outputs, available, mode)
        return greedy(log_probs, available) if mode == "greedy" else sample(log_probs)

    @torch.no_grad()
    def act(self, td: TensorDictBase, mode: ActMode) -> TensorDictBase:
        """Choose ``("agents", "action")`` for one env step; carry the GRU state and last action."""
        observation = td.get(OBSERVATION).to(self.device)
        available = td.get(ACTION_MASK).to(self.device)
        last_action = td.get(LAST_ACTION).to(self.device) if self.last_action_input else None
        outputs, hidden = self.acting_network.step(agent_inputs(observation, last_action), td.get(HIDDEN).to(self.device))
        actions = self.choose_actions(outputs, available, mode)
        td.set(ACTION, actions.to(td.device) if td.device is not None else actions)
        td.set(("next", *HIDDEN), hidden.to(td.get(HIDDEN).device))
        td.set(("next", *LAST_ACTION), F.one_hot(actions, self.env_info.n_actions).float().to(td.get(HIDDEN).device))
        return td

    def policy(self, mode: ActMode) -> Callable[[TensorDictBase], TensorDictBase]:
        return lambda td: self.act(td, mode)

    @property
    def exploration_policy(self) -> Callable[[TensorDictBase], TensorDictBase]:
        return self.policy("explore")

    # -- training -------------------------------------------------------------------------------
    def training_step(self, dataloader_iter: Iterator) -> None:
        batch, _, _ = next(dataloader_iter)
        self.update(batch.to(self.device))

    def update(self, batch: TensorDictBase) -> None:
        """One round of updates on a batch of episodes (see :class:`EpisodeBatch`)."""
        raise NotImplementedError

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """``dmac test --ckpt_path ...``: evaluation episodes as the ``evaluation`` settings say."""
        from callbacks.evaluation import Evaluation

        evaluation = next((c for c in self.trainer.callbacks if isinstance(c, Evaluation)), None) or Evaluation()
        metrics = evaluation.run(self.trainer, self)
        self.log_dict({f"test/{name}": value for name, value in metrics.items()}, batch_size=1)

    # -- training helpers -----------------------------------------------------------------------
    @property
    def env_steps(self) -> int:
        """Env steps collected so far, summed over ranks (0 outside a Trainer)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "env_steps", 0)

    @property
    def episodes(self) -> int:
        """Episodes collected so far, summed over ranks (0 outside a Trainer)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "episodes", 0)

    def episode_batch(self, batch: TensorDictBase) -> EpisodeBatch:
        return EpisodeBatch(batch, self.env_info.n_actions)

    def unroll(self, network: AgentRNN, episodes: EpisodeBatch) -> torch.Tensor:
        """Network outputs ``[B, L, n, out]`` over whole stored episodes."""
        last_actions = episodes.last_actions if self.last_action_input else None
        return network.unroll(agent_inputs(episodes.observation, last_actions))

    def log_policy(self, network: AgentRNN, episodes: EpisodeBatch, mode: ActMode = "sample") -> torch.Tensor:
        """``log pi`` over available actions ``[B, L, n, A]`` of a policy network over stored histories."""
        return self.policy_log_probs(self.unroll(network, episodes), episodes.available, mode)

    @staticmethod
    def bootstrap_actions(episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        """Stored actions where the episode went on; fresh samples from pi elsewhere (the bootstrap slot
        after a time limit, and padding). Any action is valid there for DMAC's critic (Prop. 4)."""
        return torch.where(episodes.filled[..., None], episodes.actions, sample(log_pi))

    def rmsprop(self, parameters: Any, lr: float) -> torch.optim.RMSprop:
        return torch.optim.RMSprop(parameters, lr=lr, alpha=self.rmsprop_alpha, eps=self.rmsprop_eps)

    def optimizer_step(self, optimizer: Any, loss: torch.Tensor) -> None:
        """Backward, clip and step one optimiser (manual optimisation)."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.grad_clip_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")
        optimizer.step()

    # -- logging --------------------------------------------------------------------------------
    def record(self, **metrics: torch.Tensor | float) -> None:
        """Accumulate scalars; their means are logged every ``trainer.log_every_n_steps`` updates
        (x-axis: env steps). Tensors stay on the device until then: no host sync per update."""
        for name, value in metrics.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + value.to(self.device)
            self._metric_counts[name] = self._metric_counts.get(name, 0) + 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.updates += 1
        if self.updates % max(1, self.trainer.log_every_n_steps) == 0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        if not self._metric_sums:
            return
        names = sorted(self._metric_sums)
        means = torch.stack([self._metric_sums[n] / self._metric_counts[n] for n in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)
            means = means / torch.distributed.get_world_size()
        self._metric_sums.clear()
        self._metric_counts.clear()
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(dict(zip(names, means.tolist())), step=self.env_steps)

    def on_train_epoch_end(self) -> None:
        if getattr(self.trainer.datamodule, "budget_reached", False):
            self.flush_metrics()
            self.trainer.should_stop = True


def check_dmac_settings(omega: float, tau: float, target_critic_tau: float | None) -> float:
    """Validate the +DMAC settings; returns the target critic's rate (``tau`` unless given)."""
    check_range("omega", omega, 0.0, float("inf"))
    check_range("tau", tau, 0.0, 1.0, low_open=True)
    if target_critic_tau is None:
        return tau
    check_range("target_critic_tau", target_critic_tau, 0.0, 1.0, low_open=True)
    return target_critic_tau


def dmac_callbacks(tau: float, target_critic_tau: float, *critics: str) -> list[TargetNetworkUpdate]:
    """rho <- (1 - tau) rho + tau pi after every actor step; each ``critics`` name ``x`` soft-updates ``target_x``."""
    return [target_policy_update(tau)] + [TargetNetworkUpdate(name, f"target_{name}", tau=target_critic_tau) for name in critics]


def hard_target_callbacks(*networks: str, every_n_updates: int | None = None, every_n_episodes: int | None = None) -> list[TargetNetworkUpdate]:
    """Copy each ``x`` into ``target_x`` every ``every_n_updates`` updates or ``every_n_episodes``
    collected episodes (the baselines' hard target copies)."""
    return [
        TargetNetworkUpdate(name, f"target_{name}", every_n_updates=every_n_updates, every_n_episodes=every_n_episodes)
        for name in networks
    ]


def freeze(network: nn.Module) -> nn.Module:
    """A target network: no gradients, never in an optimiser."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


__all__ = [
    "EpisodeBatch", "MultiAgentModule", "check_dmac_settings", "check_range", "dmac_callbacks", "freeze",
    "hard_target_callbacks",
]
