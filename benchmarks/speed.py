"""Env-only vs full training-loop throughput, and peak memory, per algorithm, env and n_envs.

    python benchmarks/speed.py                                   # stochastic game and SMAX 3m, all ten, n_envs 1/8/64
    python benchmarks/speed.py --envs smax --n-envs 8 64 256 --algorithms qmix_dmac   # the SMAX table of issue 4
    python benchmarks/speed.py --accelerator gpu                 # on a GPU machine

Each (env, n_envs, algorithm) is measured in its own process, both numbers in that one run: first
an env-only rollout with random available actions (the env's speed limit), then the training loop
(``dmac fit``'s Trainer, collector, replay buffer and updates) for ``--train-steps`` env steps, whose
throughput is the median of the per-collect ``train/env_steps_per_s`` after the buffer filled. The
peak is the process's maximum resident set size (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from common import config_paths
from dmac_lightning.algorithms import NAMES

ALGORITHMS = list(NAMES)
ENVS = {
    "stochastic_game": lambda name: config_paths(name),
    "smax": lambda name: config_paths(name, "smax", "3m"),
}


def child(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl
    import torch

    from dmac_lightning.cli import DMACCLI

    n_envs = args.n_envs[0]  # the parent passes one value
    configs = [x for path in ENVS[args.env](args.algorithm) for x in ("--config", path)]
    batch = min(32, max(1, n_envs)) if args.algorithm != "coma" else n_envs
    cli = DMACCLI(
        args=[
            *configs,
            "--data.n_envs", str(n_envs), "--data.episodes_per_collect", str(n_envs),
            "--data.batch_size", str(batch), "--data.max_env_steps", str(args.train_steps),
            "--data.env_steps_per_epoch", str(args.train_steps),
            "--evaluation.at_start", "false", "--evaluation.interval", str(10 * args.train_steps),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", args.accelerator,
        ],
        run=False,
    )
    data, module = cli.datamodule, cli.model
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")

    # 1. env only: random available actions, the same batch of envs the collector will step.
    from dmac_lightning.envs import make_env

    env = make_env(data.env_name, data.env_kwargs, n_envs=n_envs, seed=0, device=device)
    td = env.reset()
    for _ in range(20):  # warm-up (JIT compilation for SMAX)
        td = env.step_and_maybe_reset(env.rand_action(td))[1]
    started, steps = time.perf_counter(), 0
    while steps < args.env_steps:
        td = env.step_and_maybe_reset(env.rand_action(td))[1]
        steps += n_envs
    env_only = steps / (time.perf_counter() - started)
    env.close()

    # 2. the training loop.
    throughput: list[float] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, *unused) -> None:
            value = trainer.datamodule.last_collect.get("train/env_steps_per_s")
            if value:
                throughput.append(value)

    cli.trainer.callbacks.append(Probe())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(module, data)
    training = statistics.median(throughput[len(throughput) // 4 :]) if throughput else float("nan")
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print("RESULT " + json.dumps({"env_only": env_only, "training": training, "peak_mb": peak}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--env-steps", type=int, default=20_000, help="env-only steps measured")
    parser.add_argument("--train-steps", type=int, default=20_000, help="training-loop env steps measured")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        child(args)
        return
    header = f"| env | n_envs | algorithm | env-only steps/s | training-loop steps/s | training / env-only | peak MB ({'GPU' if args.accelerator == 'gpu' else 'RSS'}) |"
    print(header)
    print("|" + "---|" * 7, flush=True)
    for env in args.envs:
        if env == "smax" and importlib.util.find_spec("jaxmarl") is None:
            print(f"| smax | | | skipped: JaxMARL is not installed (pip install -e '.[smax]') | | | |", flush=True)
            continue
        for n_envs in args.n_envs:
            for algorithm in args.algorithms:
                command = [sys.executable, __file__, "--child", "--env", env, "--algorithm", algorithm, "--n-envs", str(n_envs),
                           "--env-steps", str(args.env_steps), "--train-steps", str(args.train_steps), "--accelerator", args.accelerator]
                # In a scratch directory: without a logger, Lightning writes the run's config.yaml to the cwd.
                with tempfile.TemporaryDirectory(prefix="dmac-speed-") as scratch:
                    result = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
                lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
                if result.returncode != 0 or not lines:
                    print(f"| {env} | {n_envs} | {algorithm} | failed: {result.stderr.strip().splitlines()[-1:]} | | | |", flush=True)
                    continue
                r = json.loads(lines[-1][len("RESULT "):])
                print(f"| {env} | {n_envs} | {algorithm} | {r['env_only']:.0f} | {r['training']:.0f} | "
                      f"{r['training'] / r['env_only']:.3f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
