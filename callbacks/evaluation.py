"""Periodic evaluation every ``interval`` env steps over ``episodes`` episodes (paper App. C.3)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from dmac_lightning.evaluation import Evaluator
from dmac_lightning.loggers import log_metrics
from dmac_lightning.validation import check_positive_int


class Evaluation(pl.Callback):
    """Evaluate the current policy on a separate env, on rank 0 only, and log ``eval/*``.

    Logged (x-axis env steps): ``eval/return``, ``eval/episode_length``, ``eval/win_rate`` where the
    env reports wins, ``eval/return_ratio`` (return / exact optimum) where the env knows its optimum.
    ``dmac test`` plays the same settings' episodes once.

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
        check_positive_int("evaluation.interval", interval)
        self.evaluator = Evaluator(episodes, n_envs, greedy, seed_offset)
        self.interval, self.at_start = interval, at_start
        self.next_at = 0
        self.last: dict[str, float] = {}

    @property
    def episodes(self) -> int:
        return self.evaluator.episodes

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.evaluator = self.evaluator  # what `dmac test` plays

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

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        steps = trainer.datamodule.env_steps
        self.next_at = (steps // self.interval + 1) * self.interval
        if not trainer.is_global_zero:
            return {}
        metrics = self.evaluator.run(pl_module, trainer.datamodule)
        self.last = {"env_steps": steps, **metrics}
        log_metrics(trainer, {f"eval/{k}": v for k, v in metrics.items()}, step=steps)
        rank_zero_info(f"eval @ {steps} env steps: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluator.close()
