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
        first = data.buffer.storage.get(0)
        os.makedirs(self.directory, exist_ok=True)
        torch.save(
            {
                "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "local_env_steps": data.local_env_steps,
                "global_env_steps": data.env_steps,
                "first_episode_actions": first.get(("agents", "action")).cpu(),
                "first_episode_observations": first.get(("agents", "observation")).cpu(),
                "world_size": trainer.world_size,
                "evaluated": any(getattr(c, "last", None) for c in trainer.callbacks if type(c).__name__ == "Evaluation"),
            },
            os.path.join(self.directory, f"rank{trainer.global_rank}.pt"),
        )


def cover_union_worker(rank: int, init_file: str, game: dict, steps: int, out: str) -> None:
    """One rank of a 2-process gloo group: play ``steps`` steps of the game (rank 1 none), then ask for
    the cover rate; writes what this rank's env holds as visited."""
    import torch.distributed as dist

    from dmac_lightning.envs import StochasticGameEnv

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    env = StochasticGameEnv(n_envs=2, seed=rank, **game)
    td = env.reset()
    for _ in range(steps if rank == 0 else 0):
        td = env.step_and_maybe_reset(env.rand_action(td))[1]
    own = env.checkpoint_state()["visited"].clone()
    rate = env.train_metrics()["cover_rate"]
    torch.save({"own": own, "after": env.checkpoint_state()["visited"], "rate": rate}, os.path.join(out, f"cover{rank}.pt"))
    dist.destroy_process_group()
