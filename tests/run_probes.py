"""Callbacks the end-to-end tests add to real `dmac fit` runs (``--trainer.callbacks+``)."""

import os
import signal

import pytorch_lightning as pl
import torch


class FailAt(pl.Callback):
    """Raise once the run has collected ``env_steps`` env steps: a crash in the middle of training."""

    def __init__(self, env_steps: int) -> None:
        self.env_steps = env_steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.datamodule.env_steps >= self.env_steps:
            raise RuntimeError(f"injected failure at {trainer.datamodule.env_steps} env steps")


class KillAt(pl.Callback):
    """Send the run ``signal_name`` (default SIGKILL: no exception handler runs) once it has collected
    ``env_steps`` env steps."""

    def __init__(self, env_steps: int, signal_name: str = "SIGKILL") -> None:
        self.env_steps, self.signal = env_steps, getattr(signal, signal_name)
        self.sent = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.datamodule.env_steps >= self.env_steps and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signal)


class DumpAtTrainStart(pl.Callback):
    """Write what a (resumed) run starts from: module weights, optimiser states, counters, replay buffer."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        torch.save(
            {
                "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "optimizer_states": [o.state_dict() for o in trainer.optimizers],
                "env_steps": trainer.datamodule.env_steps,
                "episodes": trainer.datamodule.episodes,
                "update_credit": (trainer.datamodule.update_credit.numerator, trainer.datamodule.update_credit.denominator),
                "newest": trainer.datamodule.newest.clone(),
                "buffer": trainer.datamodule.buffer.storage.get(torch.arange(len(trainer.datamodule.buffer))).exclude("index").cpu().to_dict(),
            },
            self.path,
        )


class FailForSeed(pl.Callback):
    """Raise in the run of seed ``seed`` only (``seed_everything``), once it has collected ``env_steps`` env steps."""

    def __init__(self, seed: int, env_steps: int) -> None:
        self.seed, self.env_steps = seed, env_steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if int(os.environ.get("PL_GLOBAL_SEED", -1)) == self.seed and trainer.datamodule.env_steps >= self.env_steps:
            raise RuntimeError(f"injected failure for seed {self.seed} at {trainer.datamodule.env_steps} env steps")


COLLECTS: list[tuple[int, int]] = []  # (seed, env steps) at every update, in the order they ran (in-process runs)


class RecordCollects(pl.Callback):
    """Append ``(seed_everything, env steps)`` to ``COLLECTS`` after every update."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        COLLECTS.append((int(os.environ["PL_GLOBAL_SEED"]), trainer.datamodule.env_steps))
