"""A callback the DDP tests add to a real multi-process run: each rank dumps what it ended with."""

import os

import pytorch_lightning as pl
import torch


class RankStateDump(pl.Callback):
    """At the end of training, rank r writes ``<directory>/rank<r>.pt``: its module's state dict, its
    own env-step count, and the first episode its replay buffer holds (the first it collected)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        buffer = data.replay if data.replay is not None else data.fresh
        first = buffer.storage.get(0)
        os.makedirs(self.directory, exist_ok=True)
        torch.save(
            {
                "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "local_env_steps": data.local_env_steps,
                "global_env_steps": data.env_steps,
                "first_episode_actions": first.get(("agents", "action")).cpu(),
                "first_episode_observations": first.get(("agents", "observation")).cpu(),
                "world_size": trainer.world_size,
            },
            os.path.join(self.directory, f"rank{trainer.global_rank}.pt"),
        )
