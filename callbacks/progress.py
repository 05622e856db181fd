"""A progress bar that speaks RL: env steps against the budget, training return, env steps/s, the last evaluation."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

from dmac_lightning.targets import ran_an_update


class RLProgressBar(TQDMProgressBar):
    """Lightning's bar with env steps as its unit: ``env steps: 20%| 12000/60000 [01:40<06:40, 120 steps/s``
    (not ``Epoch 1: 427/?``), then the last collect's training return and the last evaluation's win
    rate (SMAC/SMAX) or return ratio (stochastic game)."""

    def __init__(self, refresh_seconds: float = 0.5, process_position: int = 0, label: str = "") -> None:
        super().__init__(process_position=process_position)
        self.refresh_seconds = refresh_seconds
        self.label = label  # e.g. "seed 3": several seeds in one process each have their own line
        self._refreshed_at = 0.0

    def init_train_tqdm(self) -> Tqdm:
        data = self.trainer.datamodule
        return Tqdm(
            desc=f"{self.label} env steps".lstrip(),
            unit=" steps",
            total=data.max_env_steps,
            initial=data.env_steps,  # a resumed run starts where its checkpoint was
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Lightning's would reset the bar to the epoch's batches; one bar runs over the whole budget.
        if self.train_progress_bar is None or self._leave:
            self.train_progress_bar = self.init_train_tqdm()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if ran_an_update(outputs) and now - self._refreshed_at >= self.refresh_seconds:
            self._refreshed_at = now
            self._show_env_steps(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the throttle above may have skipped the epoch's last collect; the bar must end where the data did
        self._show_env_steps(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)

    def _show_env_steps(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar, data = self.train_progress_bar, trainer.datamodule
        if bar is None or bar.disable or data is None:
            return
        bar.n = min(data.env_steps, data.max_env_steps)
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        data = trainer.datamodule
        if data is None:
            return metrics
        collected = data.last_collect
        if "train/episode_return" in collected:
            metrics["return"] = f"{collected['train/episode_return']:.3g}"
        for callback in trainer.callbacks:
            last = getattr(callback, "last", None)
            if isinstance(last, dict) and "return" in last:
                key = "win_rate" if "win_rate" in last else ("return_ratio" if "return_ratio" in last else "return")
                metrics[f"eval_{key}"] = f"{last[key]:.3g}"
        return metrics
