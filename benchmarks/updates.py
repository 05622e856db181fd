"""Milliseconds per update, per algorithm, on one fixed batch of SMAX 3m episodes (issue 12, item 4).

    python benchmarks/updates.py                        # all ten, 32 episodes, 30 timed updates each
    python benchmarks/updates.py --algorithms dop_dmac qmix_dmac --updates 50

Per algorithm, in one process, one thread: a batch of ``--episodes`` SMAX 3m episodes collected once with
the algorithm's initial policy (then served again and again), and two timings of the same update:

* **ours**: Lightning's ``Trainer.fit`` running the module's ``training_step`` on that batch (manual
  optimisation through Lightning's optimiser wrappers, the target-network callbacks, metric accumulation):
  the median time from one update's end to the next's;
* **bare torch**: the same networks and the same update math on the same tensors with no Lightning and no
  TorchRL: the batch converted to plain tensors once (outside the timing) and the module's critic and actor
  steps called directly, with Lightning's optimiser plumbing (``optimizers()``, ``manual_backward``,
  ``clip_gradients``, ``LightningOptimizer.step``) replaced by ``zero_grad``/``backward``/
  ``clip_grad_norm_``/``step`` of plain ``torch.optim`` optimisers, and the target networks updated as
  the callbacks would.

The ratio is what the framework costs on top of the math. Both run after a few warm-up updates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import config_paths  # noqa: E402


def build(algorithm: str, episodes: int):
    from dmac_lightning.cli import DMACCLI

    configs = config_paths(algorithm, "smax", "3m")
    cli = DMACCLI(
        args=[
            *(x for path in configs for x in ("--config", path)),
            "--data.n_envs", str(episodes), "--data.episodes_per_collect", str(episodes), "--data.batch_size", str(episodes),
            "--data.recent_window", str(episodes), "--data.recent_episodes", "0", "--data.warmup_episodes", "0",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        ],
        run=False,
    )
    data, module = cli.datamodule, cli.model
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    data.collect()
    batch = data.sample()
    data.teardown("fit")
    return module, data.env_info, batch


def time_ours(module, info, batch, updates: int, warmup: int) -> float:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    class FixedBatch(pl.LightningDataModule):
        env_info, env_steps, episodes = info, 0, 0

        def train_dataloader(self):
            return DataLoader([batch] * (warmup + updates), batch_size=None, collate_fn=lambda x: x)

    ends: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *unused) -> None:
            ends.append(time.perf_counter())

    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Clock()], accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0,
    )
    module.evaluator.episodes = 0
    trainer.fit(module, FixedBatch())
    gaps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :])]
    return 1000 * statistics.median(gaps)


def time_bare(module, batch, updates: int, warmup: int) -> float:
    """The module's own update steps with plain torch optimisation (see the module docstring)."""
    import torch

    from dmac_lightning.targets import TargetNetworkUpdate

    optimizers = module.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    # Plain torch in place of Lightning's plumbing, on this module object only.
    module.optimizers = types.MethodType(lambda self: optimizers if len(optimizers) > 1 else optimizers[0], module)
    module.manual_backward = types.MethodType(lambda self, loss: loss.backward(), module)

    def clip(self, optimizer, gradient_clip_val, gradient_clip_algorithm="norm"):
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val, foreach=True)

    module.clip_gradients = types.MethodType(clip, module)
    module.record = types.MethodType(lambda self, **metrics: None, module)
    targets = [callback for callback in module.configure_callbacks() if isinstance(callback, TargetNetworkUpdate)]
    episodes = module.episode_batch(batch)

    def update() -> None:
        module.update_on(episodes)
        for callback in targets:
            callback.on_train_batch_end(None, module, {"updated": True}, None, 0)

    times = []
    for i in range(warmup + updates):
        started = time.perf_counter()
        update()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[warmup:])


def compile_networks(module) -> None:
    """Every network of ``module`` (its direct submodules) under ``torch.compile``: ``forward`` and, for the
    recurrent agent networks, ``unroll``. Dynamic shapes: batches are cut after their longest episode."""
    import torch

    for network in module.children():
        network.forward = torch.compile(network.forward, dynamic=True)
        if hasattr(network, "unroll"):
            network.unroll = torch.compile(network.unroll, dynamic=True)


def main(argv: list[str] | None = None) -> None:
    from dmac_lightning.algorithms import NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(NAMES), choices=list(NAMES))
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true",
                        help="also time the bare update with every network's forward (and unroll) under torch.compile")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    compiled_header = (" bare torch, compiled ms/update |", "---|") if args.compile else ("", "")
    print(f"| algorithm | batch (episodes x steps) | ours ms/update | bare torch ms/update | ours / bare |{compiled_header[0]}\n"
          f"|---|---|---|---|---|{compiled_header[1]}")
    for name in args.algorithms:
        module, info, batch = build(name, args.episodes)
        ours = time_ours(module, info, batch, args.updates, args.warmup)
        fresh_module, _, _ = build(name, args.episodes)
        bare = time_bare(fresh_module, batch, args.updates, args.warmup)
        shape = batch["replay"].batch_size if "replay" in batch.keys() else batch.batch_size
        compiled = ""
        if args.compile:
            compiled_module, _, _ = build(name, args.episodes)
            compile_networks(compiled_module)
            compiled = f" {time_bare(compiled_module, batch, args.updates, args.warmup):.1f} |"
        print(f"| {name} | {shape[0]} x {shape[1] - 1} | {ours:.1f} | {bare:.1f} | {ours / bare:.2f} |{compiled}", flush=True)


if __name__ == "__main__":
    main()
