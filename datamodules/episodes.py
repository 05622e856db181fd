"""Episodes from a TorchRL collector, padded to the episode limit, served from a replay buffer.

Data flow: ``Collector`` (policy = the LightningModule's current actor, same weights, no copy)
-> :class:`~datamodules.assembler.EpisodeAssembler` (complete, padded episodes; the stored layout is
described there) -> ``TensorDictReplayBuffer(LazyTensorStorage)`` -> :class:`EpisodeStream` yields
``episodes_per_collect x updates_per_episode`` sampled batches after every collect.

A batch draws episodes without replacement (as PyMARL and the authors' code do): ``batch_size``
uniformly from the whole buffer, plus ``recent_episodes`` from the newest ``recent_window`` ones (the
authors' DMAC batches: 8 replayed + 4 of the newest 16). The algorithm's ``data_regime`` shapes it:
``off_policy`` one batch of both parts; ``on_policy`` only the newest (the buffer holds just
``recent_window`` episodes); ``mixed`` (DOP) the two parts apart, ``{"fresh": ..., "replay": ...}``.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from typing import Any, Iterator, Literal

import pytorch_lightning as pl
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase, TensorDictPrimer, TransformedEnv

from datamodules.assembler import EpisodeAssembler, trim_to_longest
from datamodules.rng import restore_rng_state, rng_state
from dmac_lightning import lockstep
from dmac_lightning.envs import EnvInfo, check_env_config, env_extra, env_metadata, make_env
from dmac_lightning.loggers import log_hyperparams, log_metrics
from dmac_lightning.validation import INF, check_positive_int, check_range

Regime = Literal["off_policy", "on_policy", "mixed"]


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values


class EpisodeStream(IterableDataset):
    """One training epoch: collect, then yield the updates those episodes earned, until the epoch's env steps."""

    def __init__(self, datamodule: EpisodeDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[TensorDictBase]:
        data = self.datamodule
        epoch_end = min(data.max_env_steps, (data.env_steps // data.env_steps_per_epoch + 1) * data.env_steps_per_epoch)
        while data.env_steps < epoch_end:
            lockstep.pause()  # several seeds in one process (dmac fit --seeds N): the others collect and update now
            data.collect()
            if not data.can_sample():
                continue
            for _ in range(data.updates_due()):
                yield data.sample()


class EpisodeDataModule(pl.LightningDataModule):
    """Collects episodes with the module's current policy and serves batches of whole episodes.

    Args:
        env: registered env key (``stochastic_game``; ``smax``, ``smac``, ``smacv2`` when installed).
        env_kwargs: the env's own settings (e.g. ``n_states``, ``map_name``).
        n_envs: environments stepped together in one batch.
        episodes_per_collect: complete episodes collected between two rounds of updates.
        updates_per_episode: gradient updates (sampled batches) per collected episode, fractions allowed:
            1/8 is PyMARL's parallel runner on SMAC (one update per 8 episodes), 1 its episode runner,
            4 the authors' DMAC code. The updates of a collect run after it; a fraction's remainder
            carries over to the next collect. No updates are earned before the buffer holds a batch.
        batch_size: episodes per batch drawn uniformly from the whole buffer (on-policy algorithms: from
            the newest ``recent_window``).
        recent_episodes: episodes per batch drawn from the newest ``recent_window`` as well (the
            authors' DMAC: 4 of the newest 16 besides 8 replayed); DOP's fresh episodes (default
            ``min(batch_size, recent_window)`` there).
        recent_window: how many of the newest episodes count as recent (default ``episodes_per_collect``:
            the last collect's).
        warmup_episodes: no updates until the buffer holds this many episodes (the authors' DMAC and
            FOP: 100).
        buffer_size: replay capacity in episodes (on-policy algorithms keep only ``recent_window``).
        checkpoint_buffer: save the replay buffer's episodes in every checkpoint, so that a resumed
            run continues with the buffer it had (single-process runs; several ranks refill theirs).
            Turn off for huge buffers: a checkpoint then holds only the networks and counters.
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
        updates_per_episode: float = 0.125,
        batch_size: int = 32,
        recent_episodes: int = 0,
        recent_window: int | None = None,
        warmup_episodes: int = 0,
        buffer_size: int = 5000,
        checkpoint_buffer: bool = True,
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
            ("batch_size", batch_size),
            ("buffer_size", buffer_size),
            ("max_env_steps", max_env_steps),
            ("env_steps_per_epoch", env_steps_per_epoch),
        ):
            check_positive_int(f"data.{name}", value)
        check_range("data.updates_per_episode", updates_per_episode, 0.0, INF, low_open=True)
        recent_window = episodes_per_collect if recent_window is None else recent_window
        check_positive_int("data.recent_window", recent_window)
        check_range("data.recent_episodes", recent_episodes, 0, recent_window)
        check_range("data.warmup_episodes", warmup_episodes, 0, buffer_size)
        if batch_size > buffer_size:
            raise ValueError(
                f"data.batch_size ({batch_size}) is larger than the replay buffer (data.buffer_size = {buffer_size}); "
                "allowed: 1 <= batch_size <= buffer_size"
            )
        if recent_window > buffer_size:
            raise ValueError(f"data.recent_window ({recent_window}) is larger than the replay buffer (data.buffer_size = {buffer_size})")
        self.save_hyperparameters()
        self.env_name, self.env_kwargs = env, env_kwargs
        self.n_envs, self.episodes_per_collect = n_envs, episodes_per_collect
        self.updates_per_episode = Fraction(updates_per_episode).limit_denominator(10_000)
        self.update_credit = Fraction(0)  # updates earned by collected episodes and not yet run
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.recent_episodes, self.recent_window, self.warmup_episodes = recent_episodes, recent_window, warmup_episodes
        self.checkpoint_buffer = checkpoint_buffer
        self.max_env_steps, self.env_steps_per_epoch = max_env_steps, env_steps_per_epoch
        self._seed, self._env_device = seed, env_device
        self.env: EnvBase | None = None
        self.env_info: EnvInfo | None = None
        self.buffer: TensorDictReplayBuffer | None = None
        self.newest = torch.empty(0, dtype=torch.long)  # storage indices of the newest recent_window episodes, oldest first
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
        self._pending_buffer: dict | None = None
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
        if metadata:
            log_hyperparams(self.trainer, metadata)
        capacity = self.buffer_size
        if self.regime == "on_policy":
            if self.batch_size > self.recent_window:
                raise ValueError(
                    f"data.batch_size ({self.batch_size}) is larger than the on-policy buffer, which holds only the "
                    f"{self.recent_window} newest episodes (data.recent_window, default data.episodes_per_collect); "
                    f"allowed: 1 <= batch_size <= {self.recent_window}"
                )
            capacity = self.recent_window
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity, device=self.device), batch_size=self.batch_size)
        self._restore_buffer()

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
            # The assembler copies every step out of the collector's TensorDict at once, and cuts episodes by
            # their done flags: the collector may reuse one output TensorDict and skip trajectory ids.
            return_same_td=True,
            track_traj_ids=False,
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
        written = torch.as_tensor(self.buffer.extend(episodes)).reshape(-1).cpu()
        self.newest = torch.cat([self.newest, written])[-self.recent_window :]
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
        train_metrics = env_extra(self.env, "train_metrics")
        if train_metrics is not None:
            self.last_collect.update({f"train/{k}": v for k, v in train_metrics().items()})
        self._log_collect()
        return episodes

    def _log_collect(self) -> None:
        now = time.perf_counter()
        if self._log_clock is not None:
            then, steps_then = self._log_clock
            if now > then:
                self.last_collect["train/env_steps_per_s"] = (self.env_steps - steps_then) / (now - then)
        self._log_clock = (now, self.env_steps)
        log_metrics(self.trainer, self.last_collect, step=self.env_steps)

    def _buffer_ready(self) -> bool:
        if self.buffer is None:
            return False
        if self.regime == "on_policy":
            return len(self.newest) >= self.batch_size
        return len(self.buffer) >= max(self.batch_size, self.warmup_episodes) and len(self.newest) >= self.recent_episodes

    def can_sample(self) -> bool:
        """Whether every rank's buffer holds a batch (as of the last collect, when one ran)."""
        return self._every_rank_ready if self._every_rank_ready is not None else self._buffer_ready()

    def updates_due(self) -> int:
        """The updates the last collect's episodes earned (with the carried-over fraction)."""
        self.update_credit += self.episodes_per_collect * self.updates_per_episode
        due = int(self.update_credit)
        self.update_credit -= due
        return due

    def sample(self) -> TensorDictBase:
        """A batch of whole episodes, cut after the longest (see the module docstring)."""
        if self.regime == "on_policy":
            return trim_to_longest(self._recent(self.batch_size))
        if self.regime == "mixed":
            fresh = self._recent(self.recent_episodes or min(self.batch_size, self.recent_window))
            return TensorDict({"fresh": trim_to_longest(fresh), "replay": trim_to_longest(self._replayed(self.batch_size))}, batch_size=[])
        batch = self._replayed(self.batch_size)
        if self.recent_episodes:
            batch = torch.cat([batch, self._recent(self.recent_episodes)])
        return trim_to_longest(batch)

    def _replayed(self, count: int) -> TensorDictBase:
        """``count`` distinct episodes, uniformly from the whole buffer."""
        return self.buffer.storage.get(torch.randperm(len(self.buffer))[:count])

    def _recent(self, count: int) -> TensorDictBase:
        """``count`` distinct episodes, uniformly from the newest ``recent_window``."""
        return self.buffer.storage.get(self.newest[torch.randperm(len(self.newest))[:count]])

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
            "update_credit": (self.update_credit.numerator, self.update_credit.denominator),
            "rng": rng_state(),
        }
        checkpoint_state = env_extra(self.env, "checkpoint_state") if self.env is not None else None
        if checkpoint_state is not None:
            state["env"] = checkpoint_state()
        if self.checkpoint_buffer and self.buffer is not None and len(self.buffer):
            # The stored episodes by position (plain tensors: the checkpoint loads with weights_only=True),
            # the writer's cursor and which are the newest: the resumed buffer samples as this one would.
            state["buffer"] = {
                "episodes": self.buffer.storage.get(torch.arange(len(self.buffer))).cpu().state_dict(),
                "writer": self.buffer.writer.state_dict(),
                "newest": self.newest.clone(),
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.env_steps = int(state_dict["env_steps"])
        self.episodes = int(state_dict["episodes"])
        self.collects = int(state_dict["collects"])
        self.update_credit = Fraction(*state_dict.get("update_credit", (0, 1)))
        load_checkpoint_state = env_extra(self.env, "load_checkpoint_state") if self.env is not None else None
        if "env" in state_dict and load_checkpoint_state is not None:
            load_checkpoint_state(state_dict["env"])
        single_process = state_dict.get("world_size", 1) == self.world_size == 1
        self._pending_rng = state_dict.get("rng") if single_process else None
        # Rank 0's buffer would be every rank's: several ranks collect their own again instead.
        self._pending_buffer = state_dict.get("buffer") if single_process else None
        self._restore_buffer()
        if self._pending_rng is None:
            # Several ranks share one saved state: give each rank its own stream again.
            generator_seed = self.seed * 1_000_003 + self.env_steps
            torch.manual_seed(generator_seed)
            self._rank_streams_seeded = True
            if self.env is not None:
                self.env.set_seed(generator_seed)
        self._log_clock = None

    def _restore_buffer(self) -> None:
        """Put a checkpoint's episodes back, at the positions they had (once the buffer exists)."""
        saved, buffer = self._pending_buffer, self.buffer
        if saved is None or buffer is None:
            return
        self._pending_buffer = None
        episodes = TensorDict().load_state_dict(saved["episodes"], strict=False)
        episodes = episodes.exclude("index").to(self.device)  # the buffer writes its own "index"
        capacity = buffer.storage.max_size
        if episodes.batch_size[0] > capacity:
            raise ValueError(
                f"the checkpoint's replay buffer holds {episodes.batch_size[0]} episodes, more than this run's "
                f"(data.buffer_size, or data.recent_window for on-policy algorithms: {capacity}); resume with the "
                "data settings the checkpoint was trained with, or data.checkpoint_buffer false"
            )
        buffer.extend(episodes)
        buffer.writer.load_state_dict(saved["writer"])
        self.newest = saved["newest"].clone()

    def _apply_pending_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng:
            restore_rng_state(rng)

    def teardown(self, stage: str) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = None
            self._batches = None
            self._assembler = None


def _identity(batch: Any) -> Any:
    return batch
