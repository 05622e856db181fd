"""Keep what was learned when a run dies: a checkpoint written from the exception handler."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from dmac_lightning.targets import ran_an_update


class CrashCheckpoint(pl.Callback):
    """On an exception (including Ctrl-C), write ``on_exception.ckpt`` beside the run's checkpoints.

    ``dmac fit --ckpt_path last`` resumes from whichever of ``last.ckpt`` and this is newer.
    """

    FILENAME = "on_exception.ckpt"

    def __init__(self) -> None:
        self.trained_this_session = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.trained_this_session |= ran_an_update(outputs)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Before the first update of this session (e.g. a failed restore) there is nothing new to keep,
        # and writing would shadow the checkpoint we were resuming from.
        checkpoint = trainer.checkpoint_callback
        directory = getattr(checkpoint, "dirpath", None)
        if directory is None or not self.trained_this_session:
            return
        try:
            # Rank 0 writes, without Trainer.save_checkpoint's closing barrier: under DDP a rank that
            # failed alone would wait there for ranks that are waiting in a collective, and hang.
            if trainer.is_global_zero:
                state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                trainer.strategy.checkpoint_io.save_checkpoint(state, os.path.join(directory, self.FILENAME))
        except Exception as error:  # the original exception matters more than this one
            rank_zero_warn(f"could not write {self.FILENAME} after {type(exception).__name__}: {error}")
