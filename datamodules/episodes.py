"""Episodes from a TorchRL collector, padded to the episode limit, served from a replay buffer.

Data flow: ``Collector`` (policy = the LightningModule's current actor, same weights, no copy)
-> :class:`EpisodeAssembler` (complete, padded episodes) -> ``TensorDictReplayBuffer(LazyTensorStorage)``
-> :class:`EpisodeStream` yields ``updates_per_collect`` sampled batches after every collect.

A stored episode is a TensorDict of batch ``[episode_limit + 1]`` (time): step ``t`` holds the observation, action mask and state seen at ``t``, the
action taken, and the reward and termination that followed. The extra last slot holds the
observation after the final step (the bootstrap state). ``filled`` marks the steps where an action
was taken; padding has zero observations and all actions available (so masked softmaxes stay finite).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Iterator, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import RandomSampler, SamplerWithoutReplacement
from torchrl.envs import EnvBase, TensorDictPrimer, TransformedEnv

from dmac_lightning.envs import EnvInfo, check_env_config, env_metadata, make_env
from dmac_lightning.envs.common import ACTION, ACTION_MASK, BATTLE_WON, BROKEN, OBSERVATION, STATE

Regime = Literal["off_policy", "on_policy", "mixed"]


# Stored per step: what was seen (also the bootstrap slot after the last step), what was done, what followed.
_SEEN = {OBSERVATION: OBSERVATION, ACTION_MASK: ACTION_MASK, STATE: STATE}
_DONE_AND_FOLLOWED = {ACTION: ACTION, "reward": ("next", "reward"), "terminated": ("next", "terminated")}


class EpisodeAssembler:
    """Cuts the collector's stream of steps into complete episodes in the stored layout.

    Each env's episode in progress lives in ``pending`` (per key ``[n_envs, episode_limit + 1, ...]``);
    a collected step is written into it for all envs at once, and an episode that ends moves to a
    first-in-first-out queue, in the order episodes end and, among those ending together, the order
    they started (TorchRL's trajectory order). An episode its env marked broken
    (``("info", "episode_broken")``, e.g. after a StarCraft II crash) is dropped when it ends.
    """

    def __init__(self, episode_limit: int) -> None:
        self.episode_limit = episode_limit
        self.pending: dict[Any, torch.Tensor] = {}
        self.queue: list[dict[Any, torch.Tensor]] = []
        self.queued = 0
        self.dropped = 0
        self._steps = 0

    def add(self, frames: TensorDictBase) -> None:
        """Steps ``[n_envs, T]`` as the collector yields them (``T`` consecutive steps of every env)."""
        sources = {**_SEEN, **_DONE_AND_FOLLOWED}
        if ("next", *BATTLE_WON) in frames.keys(include_nested=True):
            sources["battle_won"] = ("next", *BATTLE_WON)
        step_values = {name: frames.get(key) for name, key in sources.items()}
        if "battle_won" in step_values:
            step_values["battle_won"] = step_values["battle_won"][..., 0]  # stored [L + 1], no trailing dim
        next_seen = {name: frames.get(("next", *_as_tuple(key))) for name, key in _SEEN.items()}
        done = frames.get(("next", "done"))[..., 0]
        broken = frames.get(("next", *BROKEN))[..., 0] if ("next", *BROKEN) in frames.keys(include_nested=True) else None
        if not self.pending:
            self._allocate(step_values, done)
        for t in range(done.shape[1]):
            self._add_step(
                {name: value[:, t] for name, value in step_values.items()},
                {name: value[:, t] for name, value in next_seen.items()},
                done[:, t],
                None if broken is None else broken[:, t],
            )

    def _allocate(self, step_values: dict[Any, torch.Tensor], done: torch.Tensor) -> None:
        n_envs, device = done.shape[0], done.device
        for name, value in step_values.items():
            shape = (n_envs, self.episode_limit + 1, *value.shape[2:])
            self.pending[name] = torch.full(shape, name == ACTION_MASK, dtype=value.dtype, device=device)
        self.pending["filled"] = torch.zeros(n_envs, self.episode_limit + 1, dtype=torch.bool, device=device)
        self._length = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._started = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._envs = torch.arange(n_envs, device=device)

    def _add_step(self, values: dict, next_seen: dict, done: torch.Tensor, broken: torch.Tensor | None) -> None:
        position = self._length
        if bool((position >= self.episode_limit).any()):
            raise RuntimeError(f"an episode lasted longer than the env's episode_limit {self.episode_limit}")
        for name, value in values.items():
            self.pending[name][self._envs, position] = value.reshape(self.pending[name][:, 0].shape)
        self.pending["filled"][self._envs, position] = True
        self._steps += 1
        ended = done.nonzero().squeeze(-1)
        if ended.numel():
            for name, value in next_seen.items():  # the bootstrap observation after the last step
                self.pending[name][ended, position[ended] + 1] = value[ended]
            ended = ended[torch.argsort(self._started[ended], stable=True)]
            episodes = {name: stored[ended] for name, stored in self.pending.items()}
            if broken is not None:
                intact = ~broken[ended]
                episodes = {name: value[intact] for name, value in episodes.items()}
                self.dropped += ended.numel() - episodes["filled"].shape[0]
            self.queue.append(episodes)
            self.queued += episodes["filled"].shape[0]
            for name, stored in self.pending.items():
                stored[ended] = name == ACTION_MASK
            self._started[ended] = self._steps
        self._length = torch.where(done, 0, position + 1)

    def pop(self, count: int) -> TensorDict:
        """The ``count`` oldest complete episodes, a TensorDict ``[count, episode_limit + 1]``."""
        merged = {name: torch.cat([episodes[name] for episodes in self.queue]) for name in self.pending}
        self.queue = [{name: value[count:] for name, value in merged.items()}]
        self.queued -= count
        out = TensorDict({}, batch_size=(count, self.episode_limit + 1), device=merged["filled"].device)
        for name, value in merged.items():
            out.set(name, value[:count])
        return out


def _as_tuple(key: str | tuple) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def trim_to_longest(batch: TensorDictBase) -> TensorDictBase:
    """Cut the padded time dimension of ``[B, L]`` episodes after the longest one's bootstrap slot:
    short episodes padded to a long limit (SMAC's 100+) would otherwise cost most of an update."""
    longest = int(batch.get("filled").sum(-1).max())
    return batch[:, : longest + 1]


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values


class EpisodeStream(IterableDataset):
    """One training epoch: collect, then yield ``updates_per_collect`` batches, until the epoch's env steps."""

    def __init__(self, datamodule: EpisodeDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[TensorDictBase]:
        data = self.datamodule
        epoch_end = min(data.max_env_steps, (data.env_steps // data.env_steps_per_epoch + 1) * data.env_steps_per_epoch)
        while data.env_steps < epoch_end:
            data.collect()
            if not data.can_sample():
                continue
            for _ in range(data.updates_per_collect):
                yield data.sample()


class EpisodeDataModule(pl.LightningDataModule):
    """Collects episodes with the module's current policy and serves batches of whole episodes.

    Args:
        env: registered env key (``stochastic_game``; ``smax``, ``smac``, ``smacv2`` when installed).
        env_kwargs: the env's own settings (e.g. ``n_states``, ``map_name``).
        n_envs: environments stepped together in one batch.
        episodes_per_collect: complete episodes collected between two rounds of updates.
        updates_per_collect: sampled batches (gradient updates) after every collect.
        batch_size: episodes per batch.
        buffer_size: replay capacity in episodes (on-policy algorithms keep only the fresh episodes).
        max_env_steps: training stops once this many env steps (summed over ranks) were collected.
        env_steps_per_epoch: a Lightning epoch, and so a checkpoint, every this many env steps.
        seed: rollout seed; defaults to the run's ``seed_everything``. Rank r uses ``seed + r``.
        env_device: where envs step and episodes are stored; defaults to the module's device.
    """

    def __init__(
        self,
        env: str = "stochastic_game",
        env_kwargs: dict[str, Any] | None = None,
        n_envs: int = 8,
        episodes_per_collect: int = 8,
        updates_per_collect: int = 1,
        batch_size: int = 32,
        buffer_size: int = 5000,
        max_env_steps: int = 100_000,
        env_steps_per_epoch: int = 10_000,
        seed: int | None = None,
        env_device: str | None = None,
    ) -> None:
        super().__init__()
        env_kwargs = dict(env_kwargs or {})
        check_env_config(env, env_kwargs)
        for name, value in (
            ("n_envs", n_envs),
            ("episodes_per_collect", episodes_per_collect),
            ("updates_per_collect", updates_per_collect),
            ("batch_size", batch_size),
            ("buffer_size", buffer_size),
            ("max_env_steps", max_env_steps),
            ("env_steps_per_epoch", env_steps_per_epoch),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be an integer >= 1, got {value!r}")
        if batch_size > buffer_size:
            raise ValueError(
                f"data.batch_size ({batch_size}) is larger than the replay buffer (data.buffer_size = {buffer_size}); "
                "allowed: 1 <= batch_size <= buffer_size"
            )
        self.save_hyperparameters()
        self.env_name, self.env_kwargs = env, env_kwargs
        self.n_envs, self.episodes_per_collect, self.updates_per_collect = n_envs, episodes_per_collect, updates_per_collect
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.max_env_steps, self.env_steps_per_epoch = max_env_steps, env_steps_per_epoch
        self._seed, self._env_device = seed, env_device
        self.env: EnvBase | None = None
        self.env_info: EnvInfo | None = None
        self.replay: TensorDictReplayBuffer | None = None
        self.fresh: TensorDictReplayBuffer | None = None
        self._collector: Collector | None = None
        self._batches: Iterator[TensorDictBase] | None = None
        self._assembler: EpisodeAssembler | None = None
        # Counters are global (summed over ranks) so every rank agrees on epochs and on stopping.
        self.env_steps = 0
        self.episodes = 0
        self.collects = 0
        # This rank's own share (not checkpointed: ranks may change on resume).
        self.local_env_steps = 0
        self.last_collect: dict[str, float] = {}
        self._log_clock: tuple[float, int] | None = None
        self._pending_rng: dict | None = None
        self._rank_streams_seeded = False
        self._every_rank_ready: bool | None = None
        self._module: pl.LightningModule | None = None

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def seed(self) -> int:
        base = self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return base + self.rank

    @property
    def device(self) -> torch.device:
        if self._env_device is not None:
            return torch.device(self._env_device)
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def connect(self, module: pl.LightningModule) -> None:
        """Use ``module``'s policy without a Trainer (tests, benchmarks, notebooks)."""
        self._module = module

    @property
    def module(self) -> pl.LightningModule:
        if self.trainer is not None:
            return self.trainer.lightning_module
        if self._module is None:
            raise RuntimeError("EpisodeDataModule has no module: run it in a Trainer or call connect(module) first")
        return self._module

    @property
    def regime(self) -> Regime:
        return getattr(self.module, "data_regime", "off_policy")

    def make_env(self, n_envs: int, seed: int) -> EnvBase:
        return make_env(self.env_name, self.env_kwargs, n_envs=n_envs, seed=seed, device=self.device)

    def setup(self, stage: str) -> None:
        if self.env is not None:
            return
        self.env = self.make_env(self.n_envs, self.seed)
        self.env_info = self.env.info
        metadata = env_metadata(self.env_name)
        if metadata and self.trainer is not None and self.trainer.logger is not None:
            self.trainer.logger.log_hyperparams(metadata)
        regime = self.regime
        if regime in ("on_policy", "mixed"):
            if self.batch_size > self.episodes_per_collect and regime == "on_policy":
                raise ValueError(
                    f"data.batch_size ({self.batch_size}) is larger than the on-policy buffer, which holds only the "
                    f"{self.episodes_per_collect} fresh episodes of a collect (data.episodes_per_collect); allowed: "
                    f"1 <= batch_size <= {self.episodes_per_collect}"
                )
            self.fresh = self._buffer(self.episodes_per_collect, min(self.batch_size, self.episodes_per_collect), fresh=True)
        if regime in ("off_policy", "mixed"):
            self.replay = self._buffer(self.buffer_size, self.batch_size, fresh=False)

    def _buffer(self, capacity: int, batch_size: int, fresh: bool) -> TensorDictReplayBuffer:
        sampler = SamplerWithoutReplacement() if fresh else RandomSampler()
        storage = LazyTensorStorage(capacity, device=self.device)
        return TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=batch_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(EpisodeStream(self), batch_size=None, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        """One item: ``test_step`` plays the evaluation episodes itself."""
        return DataLoader([0], batch_size=None)

    def wrap_env(self, env: EnvBase) -> TransformedEnv:
        """Add the module's carried per-step state (e.g. GRU hidden state) to ``env``'s specs."""
        spec = self.module.carried_state_spec(env.batch_size[0])
        return TransformedEnv(env, TensorDictPrimer(spec, expand_specs=False))

    def _ensure_collector(self) -> None:
        if self._collector is not None:
            return
        self._apply_pending_rng()
        if self.world_size > 1 and not self._rank_streams_seeded:
            # seed_everything gave every rank the same torch stream: without this, all ranks would draw
            # the same exploration noise and replay samples. (Weights stay identical: DDP synced them.)
            torch.manual_seed(self.seed)
            self._rank_streams_seeded = True
        module = self.module
        env = self.wrap_env(self.env)
        self._collector = Collector(
            env,
            module.exploration_policy,
            frames_per_batch=self.n_envs,  # one step of every env per batch: episodes are cut as they end
            total_frames=-1,
            trust_policy=True,
            auto_register_policy_transforms=False,
            env_device=self.device,
            policy_device=module.device,
            storing_device=self.device,
        )
        self._batches = iter(self._collector)
        self._assembler = EpisodeAssembler(self.env_info.episode_limit)

    @property
    def dropped_episodes(self) -> int:
        """Broken episodes this rank dropped since its collector started (not checkpointed)."""
        return self._assembler.dropped if self._assembler is not None else 0

    # -- collection -----------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> TensorDict:
        """Collect ``episodes_per_collect`` complete episodes into the buffers; update the counters."""
        self._ensure_collector()
        while self._assembler.queued < self.episodes_per_collect:
            self._assembler.add(next(self._batches))
        episodes = self._assembler.pop(self.episodes_per_collect)
        for buffer in (self.fresh, self.replay):
            if buffer is not None:
                buffer.extend(episodes)
        returns = episodes.get("reward").sum((1, 2))
        stats = torch.stack(
            [
                episodes.get("filled").sum().float(),
                torch.tensor(float(episodes.batch_size[0]), device=returns.device),
                returns.sum(),
                episodes.get("battle_won").any(-1).float().sum() if "battle_won" in episodes.keys() else returns.new_zeros(()),
                torch.tensor(float(self._buffer_ready()), device=returns.device),
            ]
        )
        self.local_env_steps += int(stats[0])
        steps, count, return_sum, wins, ready = _all_reduce_sum(stats).tolist()
        # Updates start on every rank at once: a rank that dropped a broken episode may still be a batch
        # short, and ranks yielding different numbers of batches would hang DDP.
        self._every_rank_ready = int(ready) == self.world_size
        self.env_steps += int(steps)
        self.episodes += int(count)
        self.collects += 1
        self.last_collect = {
            "train/episode_return": return_sum / max(count, 1),
            "train/episode_length": steps / max(count, 1),
            "train/episodes": float(self.episodes),
        }
        if self.env_info.reports_wins:
            self.last_collect["train/win_rate"] = wins / max(count, 1)
        if self.dropped_episodes:
            self.last_collect["train/dropped_episodes"] = float(self.dropped_episodes)
        self.last_collect.update({f"train/{k}": v for k, v in getattr(self.env, "train_metrics", dict)().items()})
        self._log_collect()
        return episodes

    def _log_collect(self) -> None:
        now = time.perf_counter()
        if self._log_clock is not None:
            then, steps_then = self._log_clock
            if now > then:
                self.last_collect["train/env_steps_per_s"] = (self.env_steps - steps_then) / (now - then)
        self._log_clock = (now, self.env_steps)
        if self.trainer is not None and self.trainer.logger is not None and self.trainer.is_global_zero:
            self.trainer.logger.log_metrics(self.last_collect, step=self.env_steps)

    def _buffer_ready(self) -> bool:
        buffer = self.replay if self.replay is not None else self.fresh
        return len(buffer) >= buffer.batch_size if buffer is not None else False

    def can_sample(self) -> bool:
        """Whether every rank's buffer holds a batch (as of the last collect, when one ran)."""
        return self._every_rank_ready if self._every_rank_ready is not None else self._buffer_ready()

    def sample(self) -> TensorDictBase:
        if self.regime == "on_policy":
            return trim_to_longest(self.fresh.sample())
        if self.regime == "off_policy":
            return trim_to_longest(self.replay.sample())
        return TensorDict({"fresh": trim_to_longest(self.fresh.sample()), "replay": trim_to_longest(self.replay.sample())}, batch_size=[])

    @property
    def budget_reached(self) -> bool:
        return self.env_steps >= self.max_env_steps

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "collects": self.collects,
            "world_size": self.world_size,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.env is not None and hasattr(self.env, "checkpoint_state"):
            state["env"] = self.env.checkpoint_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.env_steps = int(state_dict["env_steps"])
        self.episodes = int(state_dict["episodes"])
        self.collects = int(state_dict["collects"])
        if "env" in state_dict and hasattr(self.env, "load_checkpoint_state"):
            self.env.load_checkpoint_state(state_dict["env"])
        self._pending_rng = state_dict.get("rng") if state_dict.get("world_size", 1) == self.world_size == 1 else None
        if self._pending_rng is None:
            # Several ranks share one saved state: give each rank its own stream again.
            generator_seed = self.seed * 1_000_003 + self.env_steps
            torch.manual_seed(generator_seed)
            self._rank_streams_seeded = True
            if self.env is not None:
                self.env.set_seed(generator_seed)
        self._log_clock = None

    def _apply_pending_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        _set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def teardown(self, stage: str) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None
            self._batches = None
            self._assembler = None


def _numpy_rng_state() -> dict[str, Any]:
    # As tensors and ints: checkpoints must load with torch.load(weights_only=True).
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["position"], state["has_gauss"], state["cached"]))


def _identity(batch: Any) -> Any:
    return batch
