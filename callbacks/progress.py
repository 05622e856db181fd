"""A progress bar that speaks RL: env steps, training return, throughput, last evaluation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class RLProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        data = trainer.datamodule
        if data is None:
            return metrics
        metrics["env_steps"] = f"{data.env_steps}/{data.max_env_steps}"
        collected = data.last_collect
        if "train/episode_return" in collected:
            metrics["return"] = f"{collected['train/episode_return']:.3g}"
        if "train/env_steps_per_s" in collected:
            metrics["steps/s"] = f"{collected['train/env_steps_per_s']:.0f}"
        for callback in trainer.callbacks:
            last = getattr(callback, "last", None)
            if isinstance(last, dict) and "return" in last:
                key = "win_rate" if "win_rate" in last else ("return_ratio" if "return_ratio" in last else "return")
                metrics[f"eval_{key}"] = f"{last[key]:.3g}"
        return metrics
