"""Periodic evaluation every ``interval`` env steps over ``episodes`` episodes (paper App. C.3)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from dmac_lightning.evaluation import evaluate_episodes


class Evaluation(pl.Callback):
    """Evaluate the current policy on a separate env, on rank 0 only, and log ``eval/*``.

    Logged (x-axis env steps): ``eval/return``, ``eval/episode_length``, ``eval/win_rate`` where the
    env reports wins, ``eval/return_ratio`` (return / exact optimum) where the env knows its optimum.

    Args:
        interval: evaluate whenever this many more env steps (summed over ranks) were collected.
        episodes: episodes per evaluation.
        n_envs: envs stepped in parallel during evaluation (default: ``episodes``, one round).
        greedy: greedy actions instead of sampling; ``None`` uses the algorithm's published choice.
        at_start: also evaluate the initial policy.
        seed_offset: evaluation envs are seeded ``seed + seed_offset`` (apart from training envs).
    """

    def __init__(
        self,
        interval: int = 10_000,
        episodes: int = 20,
        n_envs: int | None = None,
        greedy: bool | None = None,
        at_start: bool = True,
        seed_offset: int = 1_000_000,
    ) -> None:
        for name, value in (("interval", interval), ("episodes", episodes), ("n_envs", n_envs or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evaluation.{name} must be an integer >= 1, got {value!r}")
        self.interval, self.episodes = interval, episodes
        self.n_envs = n_envs or episodes
        self.greedy, self.at_start, self.seed_offset = greedy, at_start, seed_offset
        self.next_at = 0
        self.last: dict[str, float] = {}
        self._env = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.datamodule.env_steps
        self.next_at = steps if (self.at_start and steps == 0) else (steps // self.interval + 1) * self.interval
        if steps == 0 and self.at_start:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.datamodule.env_steps >= self.next_at:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last.get("env_steps") != trainer.datamodule.env_steps:
            self.evaluate(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Play ``episodes`` evaluation episodes with the current policy; no logging."""
        data = trainer.datamodule
        if self._env is None:
            self._env = data.wrap_env(data.make_env(self.n_envs, data.seed + self.seed_offset))
        greedy = pl_module.greedy_evaluation if self.greedy is None else self.greedy
        was_training = pl_module.training
        pl_module.eval()
        metrics = evaluate_episodes(self._env, pl_module.policy("greedy" if greedy else "sample"), self.episodes, data.env_info.episode_limit)
        pl_module.train(was_training)
        return metrics

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        data = trainer.datamodule
        steps = data.env_steps
        self.next_at = (steps // self.interval + 1) * self.interval
        if not trainer.is_global_zero:
            return {}
        metrics = self.run(trainer, pl_module)
        self.last = {"env_steps": steps, **metrics}
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=steps)
        rank_zero_info(f"eval @ {steps} env steps: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
