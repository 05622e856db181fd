"""Every configured logger (TensorBoard, CSV, wandb, ...) gets the same tags, from rank 0.

``trainer.logger`` is only the first of ``trainer.loggers``: all metrics go through here instead.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def log_metrics(trainer: pl.Trainer | None, metrics: dict[str, float], step: int) -> None:
    """``metrics`` at x = ``step`` (env steps) to every logger, on the global-zero rank."""
    if trainer is None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def log_hyperparams(trainer: pl.Trainer | None, params: dict[str, Any]) -> None:
    if trainer is None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_hyperparams(params)
