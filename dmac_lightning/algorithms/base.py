"""What every algorithm shares: acting in the env, unrolling stored episodes, optimising, logging.

An algorithm subclasses :class:`MultiAgentModule`, builds its networks in ``build`` (sizes come
from the env, known only after the data module's ``setup``), names the network that acts and the
networks that have target copies, and writes ``critic_step(episodes)`` and ``actor_step(episodes)``:
one update is both, in ``update_order`` (the family's published order), on a batch of episodes.

``training_step`` takes the ``dataloader_iter`` so that Lightning does not prefetch: fetching a
batch runs the collector, and it must run with the weights of the *previous* update, not one update
behind (which prefetching would cause).
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Iterator, Literal

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch.nn import functional as F
from torchrl.data import Composite, Unbounded

from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.algorithms.metrics import MetricMeans
from dmac_lightning.envs.common import ACTION, ACTION_MASK, OBSERVATION, EnvInfo
from dmac_lightning.evaluation import Evaluator
from dmac_lightning.loggers import log_metrics
from dmac_lightning.networks import AgentRNN, agent_input_dim, agent_inputs
from dmac_lightning.nonfinite import NonFiniteError, divergence_message, non_finite_metrics, non_finite_tensors
from dmac_lightning.rendering import replay_directory
from dmac_lightning.policy import epsilon_mixed_log_probs, greedy, linear_schedule, masked_log_softmax, sample
from dmac_lightning.targets import ran_an_update
from dmac_lightning.validation import INF, check_positive_int, check_range

HIDDEN = ("agents", "rnn_hidden")
LAST_ACTION = ("agents", "last_action")
ActMode = Literal["explore", "sample", "greedy"]


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
        epsilon_start: exploration weight epsilon at the start of training, in [0, 1]: mixed into
            stochastic policies as ``(1 - eps) pi + eps uniform`` (COMA's epsilon-bounded softmax),
            epsilon-greedy for value-based ones. 0 explores only as the policy does.
        epsilon_finish: ... after ``epsilon_anneal_steps`` env steps (linear in between).
        epsilon_anneal_steps: env steps over which epsilon anneals.
    """

    data_regime: ClassVar[Literal["off_policy", "on_policy", "mixed"]] = "off_policy"
    evaluates_greedily: ClassVar[bool] = False
    # Networks ``x`` with a target copy ``target_x`` (updated by the family's target rule).
    target_networks: ClassVar[tuple[str, ...]] = ()
    # The steps of one update, in order.
    update_order: ClassVar[tuple[str, ...]] = ("critic", "actor")

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
        epsilon_start: float = 0.0,
        epsilon_finish: float = 0.0,
        epsilon_anneal_steps: int = 1,
    ) -> None:
        super().__init__()
        check_range("model.gamma", gamma, 0.0, 1.0)
        check_range("model.lr_actor", lr_actor, 0.0, INF, low_open=True)
        check_range("model.lr_critic", lr_critic, 0.0, INF, low_open=True)
        check_range("model.grad_clip_norm", grad_clip_norm, 0.0, INF)
        check_positive_int("model.hidden_dim", hidden_dim)
        check_range("model.epsilon_start", epsilon_start, 0.0, 1.0)
        check_range("model.epsilon_finish", epsilon_finish, 0.0, 1.0)
        check_positive_int("model.epsilon_anneal_steps", epsilon_anneal_steps)
        # Collects the init arguments of every class in the hierarchy (the subclasses' frames).
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.gamma, self.lr_actor, self.lr_critic = gamma, lr_actor, lr_critic
        self.hidden_dim, self.last_action_input = hidden_dim, last_action_input
        self.grad_clip_norm = grad_clip_norm
        self.rmsprop_alpha, self.rmsprop_eps = rmsprop_alpha, rmsprop_eps
        self.greedy_evaluation = self.evaluates_greedily if greedy_evaluation is None else greedy_evaluation
        self.epsilon_schedule = (epsilon_start, epsilon_finish, epsilon_anneal_steps)
        self.env_info: EnvInfo | None = None
        self.metrics = MetricMeans()
        self.evaluator = Evaluator()  # `dmac test`'s episodes; the Evaluation callback sets the configured one
        self.updates = 0
        self.updates_at_last_check = 0  # the non-finite check: updates are clean up to here
        self.critic_steps = 0  # critic optimiser steps (some critics take one per timestep of a batch)

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

    def rmsprop(self, parameters: Any, lr: float) -> torch.optim.RMSprop:
        return torch.optim.RMSprop(parameters, lr=lr, alpha=self.rmsprop_alpha, eps=self.rmsprop_eps, foreach=True)

    # ``configure_optimizers`` returns ``[critic, actor]`` (or ``[critic]`` without an actor).
    @property
    def critic_optimizer(self) -> Any:
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, list) else optimizers

    @property
    def actor_optimizer(self) -> Any:
        return self.optimizers()[1]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["env_info"] = self.env_info.as_dict() if self.env_info else None
        checkpoint["critic_steps"] = self.critic_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.critic_steps = checkpoint.get("critic_steps", 0)
        saved = checkpoint.get("env_info")
        if not saved:
            return
        if self.env_info is None:
            self.configure_env(EnvInfo(**saved))
        elif saved != self.env_info.as_dict():
            raise ValueError(
                f"the checkpoint was trained on an env with {saved}, but this run's env has "
                f"{self.env_info.as_dict()}: its networks fit only that layout; resume or test on an env (map, "
                "data.env_kwargs) with the same agents, actions, observation and state sizes and episode limit"
            )

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

    @property
    def epsilon(self) -> float:
        """The exploration weight now (annealed over env steps)."""
        return linear_schedule(*self.epsilon_schedule, step=self.env_steps)

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
        td.set(("next", *LAST_ACTION), F.one_hot(actions, self.env_info.n_actions).to(observation.dtype).to(td.get(HIDDEN).device))
        return td

    def policy(self, mode: ActMode) -> Callable[[TensorDictBase], TensorDictBase]:
        return lambda td: self.act(td, mode)

    @property
    def exploration_policy(self) -> Callable[[TensorDictBase], TensorDictBase]:
        return self.policy("explore")

    # -- training -------------------------------------------------------------------------------
    def training_step(self, dataloader_iter: Iterator) -> dict[str, bool]:
        try:
            batch, _, _ = next(dataloader_iter)  # collects with the current policy
            self.update(batch.to(self.device))
        except RuntimeError:  # e.g. torch.multinomial refusing the probabilities of a policy whose weights went NaN
            self.raise_if_diverged()
            raise
        return {"updated": True}

    def update(self, batch: TensorDictBase) -> None:
        """One update on a batch of episodes: the steps of ``update_order``."""
        self.update_on(self.episode_batch(batch))

    def update_on(self, episodes: Any) -> None:
        """The steps of ``update_order`` on episodes already in the algorithm's tensors (``episode_batch``)."""
        for step in self.update_order:
            if step == "critic":
                self.critic_step(episodes)
            else:
                self.actor_step(episodes)
                self.after_actor_step()

    def critic_step(self, episodes: Any) -> None:
        """Train the critic (or the Q-networks) on ``episodes``."""
        raise NotImplementedError

    def actor_step(self, episodes: Any) -> None:
        """Train the policies on ``episodes`` (nothing for a value-based method)."""

    def after_actor_step(self) -> None:
        """Runs right after every actor step, before the next step of the update."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """``dmac test --ckpt_path ...``: evaluation episodes as the ``evaluation`` settings say (with
        ``evaluation.render_episodes``, also episodes to watch in ``<run>/replays/test_*``)."""
        metrics = self.evaluator.run(self, self.trainer.datamodule)
        self.log_dict({f"test/{name}": value for name, value in metrics.items()}, batch_size=1)
        if self.evaluator.render_episodes:
            self.evaluator.record(self, self.trainer.datamodule, replay_directory(self.trainer), "test")

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

    def log_policy(self, network: AgentRNN, episodes: EpisodeBatch, mode: ActMode = "explore") -> torch.Tensor:
        """``log pi`` over available actions ``[B, L, n, A]`` of a policy network over stored histories,
        by default as it acted (with the exploration epsilon mixed in)."""
        return self.policy_log_probs(self.unroll(network, episodes), episodes.available, mode)

    def log_rho(self, episodes: EpisodeBatch) -> torch.Tensor | None:
        """The target policy's ``log rho`` over stored histories, where the algorithm has one."""
        return None

    def actor_actions(self, episodes: EpisodeBatch, log_pi: torch.Tensor) -> torch.Tensor:
        """Actions for the actor loss ``[B, T, n]``: the stored ones (on-policy policy gradient)."""
        return episodes.actions[:, episodes.decisions]

    def optimizer_step(self, optimizer: Any, loss: torch.Tensor, clip_norm: float | None = None) -> None:
        """Backward, clip the gradient norm (``grad_clip_norm`` unless given; 0: no clip) and step one
        optimiser (manual optimisation). Records the norm before clipping as ``grad_norm/critic`` or
        ``grad_norm/actor``."""
        clip_norm = self.grad_clip_norm if clip_norm is None else clip_norm
        optimizer.zero_grad()
        self.manual_backward(loss)
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if clip_norm > 0:  # what Lightning's clip_gradients does in full precision, keeping the norm it computes
            norm = torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        optimizer.step()
        self.record(**{f"grad_norm/{'critic' if optimizer is self.critic_optimizer else 'actor'}": norm})

    @property
    def critic_grad_clip_norm(self) -> float:
        """The critic's gradient-norm clip (``grad_clip_norm`` unless a family clips its critic apart)."""
        return self.grad_clip_norm

    def critic_optimizer_step(self, loss: torch.Tensor) -> None:
        """One step of the critic's optimiser, counted in ``critic_steps``."""
        self.optimizer_step(self.critic_optimizer, loss, self.critic_grad_clip_norm)
        self.critic_steps += 1

    # -- logging --------------------------------------------------------------------------------
    def record(self, **metrics: torch.Tensor | float) -> None:
        """Accumulate scalars; their means are logged every ``trainer.log_every_n_steps`` updates
        (x-axis: env steps). Tensors stay on the device until then: no host sync per update."""
        self.metrics.update(self.device, **metrics)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not ran_an_update(outputs):
            return
        self.updates += 1
        if self.updates % max(1, self.trainer.log_every_n_steps) == 0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Log the metric means since the last flush; stop the run if it diverged (``nonfinite``)."""
        means = self.metrics.compute()
        if means:
            log_metrics(self.trainer, means, step=self.env_steps)
        self.raise_if_diverged(means)

    def raise_if_diverged(self, metrics: dict[str, float] | None = None) -> None:
        """Raise :class:`NonFiniteError` with the one message a diverged run stops with, if ``metrics``
        (logged means) or any weight is NaN or infinite."""
        bad_metrics = non_finite_metrics(metrics or {})
        bad_tensors = non_finite_tensors(self)
        if not bad_metrics and not bad_tensors:
            self.updates_at_last_check = self.updates
            return
        checkpoint = getattr(self.trainer, "checkpoint_callback", None) if self._trainer is not None else None
        raise NonFiniteError(
            divergence_message(
                type(self).__name__, self.updates, self.env_steps, bad_metrics, bad_tensors, dict(self.hparams),
                last_checkpoint=getattr(checkpoint, "last_model_path", None) or None, since_update=self.updates_at_last_check,
            )
        )

    def on_train_epoch_end(self) -> None:
        if getattr(self.trainer.datamodule, "budget_reached", False):
            self.flush_metrics()
            self.trainer.should_stop = True
