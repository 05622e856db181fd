"""Keep what was collected and learned: a checkpoint per epoch counted in env steps, and one written
from the exception handler when a run dies."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn

from dmac_lightning.nonfinite import NonFiniteError, non_finite_tensors
from dmac_lightning.targets import ran_an_update


class EnvStepCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with env steps as the clock: ``epoch=3-env_steps=1600.ckpt``.

    Lightning skips a save when no optimizer step ran since the last one; here an epoch that only
    collected (the warm-up, or ranks refilling their buffers after a resume) is saved too, because a
    resumed run must not collect its env steps again.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("filename", "{epoch}-{env_steps}")
        super().__init__(**kwargs)
        self._last_env_steps_saved: int | None = None

    @staticmethod
    def _env_steps(trainer: pl.Trainer) -> int:
        return int(getattr(trainer.datamodule, "env_steps", trainer.global_step))

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_env_steps_saved == self._env_steps(trainer)
        )

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["env_steps"] = torch.tensor(self._env_steps(trainer))
        return candidates

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Never a checkpoint with non-finite weights: a diverged run stops here instead (dmac_lightning.nonfinite).
        module = trainer.lightning_module
        raise_if_diverged = getattr(module, "raise_if_diverged", None)
        if raise_if_diverged is not None:
            raise_if_diverged()
        elif non_finite_tensors(module):
            raise NonFiniteError(f"{type(module).__name__}: weights hold NaN or inf; not writing {filepath}")
        super()._save_checkpoint(trainer, filepath)
        self._last_env_steps_saved = self._env_steps(trainer)


class CrashCheckpoint(pl.Callback):
    """On an exception (including Ctrl-C), write ``on_exception.ckpt`` beside the run's checkpoints,
    unless the weights are NaN or infinite (a diverged run: its last checkpoint stays the newest).

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
        if isinstance(exception, NonFiniteError) or non_finite_tensors(pl_module):
            return  # the last checkpoint on disk holds the last finite weights: keep it the newest
        try:
            # Rank 0 writes, without Trainer.save_checkpoint's closing barrier: under DDP a rank that
            # failed alone would wait there for ranks that are waiting in a collective, and hang.
            if trainer.is_global_zero:
                state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                trainer.strategy.checkpoint_io.save_checkpoint(state, os.path.join(directory, self.FILENAME))
        except Exception as error:  # the original exception matters more than this one
            rank_zero_warn(f"could not write {self.FILENAME} after {type(exception).__name__}: {error}")


def newest_resumable(run_dir: str) -> str | None:
    """The checkpoint a run in ``run_dir`` resumes from: the newer of the last epoch's (``last.ckpt``) and the
    one a crash wrote (``on_exception.ckpt``) in ``run_dir/checkpoints``; None when it has neither."""
    saved = [os.path.join(run_dir, "checkpoints", name) for name in ("last.ckpt", CrashCheckpoint.FILENAME)]
    saved = [path for path in saved if os.path.exists(path)]
    return max(saved, key=os.path.getmtime) if saved else None
