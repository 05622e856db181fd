"""Env-only vs full training-loop throughput, and peak memory, per algorithm, env and n_envs.

    python benchmarks/speed.py                                   # stochastic game and SMAX 3m, all ten, n_envs 1/8/64
    python benchmarks/speed.py --envs smax --n-envs 8 64 256 --algorithms qmix_dmac   # the SMAX table of issue 4
    python benchmarks/speed.py --n-envs 8 64 256 --algorithms qmix_dmac --updates-per-collect 0   # collection alone
    python benchmarks/speed.py --accelerator gpu                 # on a GPU machine

Each (env, n_envs, algorithm) is measured in its own process, all numbers in that one run: first an
env-only rollout with random available actions (the env's speed limit through its TorchRL API), after a
timed warm-up; on SMAX also the JAX-only limit of the same jitted step (under ``lax.scan`` and as
back-to-back jitted calls, no torch); then the training loop (``dmac fit``'s Trainer, collector, replay
buffer and updates) for ``--train-steps`` env steps, whose throughput is the median of the per-collect
``train/env_steps_per_s`` after the buffer filled. The loop collects ``n_envs`` episodes per collect and
runs ``--updates-per-collect`` updates (default 1) on ``min(32, n_envs)`` episodes after each, so rows of
different ``n_envs`` do the same update work per collect; ``0`` switches updates off and times the data
module's ``collect`` back to back (collector, policy, episode assembly, buffer write). The peak is the
process's maximum resident set size (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from common import config_paths
from dmac_lightning.algorithms import NAMES

ALGORITHMS = list(NAMES)
WARM_UP_SECONDS = 8.0
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
    # A fixed number of updates per collect of n_envs episodes, so that rows with more envs measure the loop
    # at the same update work per collect (0: collection alone, no updates).
    updates_per_episode = max(args.updates_per_collect, 1) / n_envs
    cli = DMACCLI(
        args=[
            *configs,
            "--data.n_envs", str(n_envs), "--data.episodes_per_collect", str(n_envs),
            "--data.updates_per_episode", repr(updates_per_episode), "--data.warmup_episodes", "0",
            "--data.recent_episodes", "0", "--data.recent_window", str(n_envs),
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
    # Warm-up: SMAX's first call compiles, and XLA on CPU runs a freshly compiled step several times slower
    # for its first few seconds; measured from when that has passed.
    warm_until = time.perf_counter() + WARM_UP_SECONDS
    while time.perf_counter() < warm_until:
        td = env.step_and_maybe_reset(env.rand_action(td))[1]
    started, steps = time.perf_counter(), 0
    while steps < args.env_steps:
        td = env.step_and_maybe_reset(env.rand_action(td))[1]
        steps += n_envs
    env_only = steps / (time.perf_counter() - started)
    scan_limit = smax_jax_limit(env, args.env_steps) if data.env_name == "smax" else None
    env.close()

    # 2. the training loop.
    if args.updates_per_collect == 0:
        print("RESULT " + json.dumps({"env_only": env_only, "training": collection_only(data, module, device, args.train_steps),
                                      "scan_limit": scan_limit, "peak_mb": _peak_mb(device)}), flush=True)
        return
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
    print("RESULT " + json.dumps({"env_only": env_only, "training": training, "scan_limit": scan_limit, "peak_mb": _peak_mb(device)}),
          flush=True)


def smax_jax_limit(env, env_steps: int, steps_per_scan: int = 50) -> tuple[float, float]:
    """SMAX's speed limit: the env's own jitted step (the same battles, restarts and packed outputs) with random
    available actions drawn in JAX, no torch and no per-step Python beyond JAX's dispatch, measured two ways:
    under one jitted ``lax.scan`` of ``steps_per_scan`` steps, and as back-to-back jitted calls (on this
    CPU's XLA the scan's loop runs slower than separate calls). Returns (scan, calls) env steps/s."""
    import jax
    import jax.numpy as jnp

    n_envs, info = env.batch_size[0], env.info
    names = list(env._widths)
    offset = {name: sum(env._widths[n] for n in names[: names.index(name)]) for name in names}
    width = env._widths["action_mask"]
    step = env._step_and_restart

    def mask_of(packed, name):
        return packed[:, offset[name] : offset[name] + width].reshape(n_envs, info.n_agents, info.n_actions) > 0.5

    def one_step(carry, _):
        key, states, mask = carry
        key, draw = jax.random.split(key)
        actions = jax.random.categorical(draw, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
        key, states, packed = step(key, states, actions)
        return (key, states, mask_of(packed, "restarted_action_mask")), packed[:, offset["reward"]]

    def measure(run, steps_per_call: int) -> float:
        key, states, packed = env._reset_all(jax.random.PRNGKey(1))
        carry = (key, states, mask_of(packed, "action_mask"))
        warm_until = time.perf_counter() + WARM_UP_SECONDS  # compiles, then runs slower for a few seconds
        while time.perf_counter() < warm_until:
            carry, rewards = run(carry)
            jax.block_until_ready(rewards)
        started, steps = time.perf_counter(), 0
        while steps < env_steps:
            carry, rewards = run(carry)
            steps += n_envs * steps_per_call
        jax.block_until_ready(rewards)
        return steps / (time.perf_counter() - started)

    scan = measure(jax.jit(lambda carry: jax.lax.scan(one_step, carry, None, length=steps_per_scan)), steps_per_scan)
    calls = measure(jax.jit(lambda carry: one_step(carry, None)), 1)
    return scan, calls


def collection_only(data, module, device, env_steps: int) -> float:
    """The training loop with its updates switched off: the data module's ``collect`` (collector, policy,
    episode assembly, buffer write, counters) back to back; env steps/s over all collects after the first."""
    data._env_device = str(device)  # no Trainer to say where the envs step
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    module.to(device)
    data.collect()  # builds the collector; not timed (SMAX's step was compiled and warmed up by the env-only run)
    started, steps = time.perf_counter(), data.env_steps
    while data.env_steps - steps < env_steps:
        data.collect()
    return (data.env_steps - steps) / (time.perf_counter() - started)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--env-steps", type=int, default=20_000, help="env-only steps measured")
    parser.add_argument("--train-steps", type=int, default=20_000, help="training-loop env steps measured")
    parser.add_argument("--updates-per-collect", type=int, default=1,
                        help="updates after each collect of n_envs episodes; 0: collection alone (the loop without updates)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        child(args)
        return
    loop = "collection-only" if args.updates_per_collect == 0 else "training-loop"
    header = (f"| env | n_envs | algorithm | env-only steps/s | {loop} steps/s | {loop} / env-only | SMAX JAX-only steps/s "
              f"(scan / calls) | env-only / JAX-only | peak MB ({'GPU' if args.accelerator == 'gpu' else 'RSS'}) |")
    print(header)
    print("|" + "---|" * 9, flush=True)
    for env in args.envs:
        if env == "smax" and importlib.util.find_spec("jaxmarl") is None:
            print("| smax | | | skipped: JaxMARL is not installed (pip install -e '.[smax]') | | | | | |", flush=True)
            continue
        for n_envs in args.n_envs:
            for algorithm in args.algorithms:
                command = [sys.executable, __file__, "--child", "--env", env, "--algorithm", algorithm, "--n-envs", str(n_envs),
                           "--env-steps", str(args.env_steps), "--train-steps", str(args.train_steps), "--accelerator", args.accelerator,
                           "--updates-per-collect", str(args.updates_per_collect)]
                # In a scratch directory: without a logger, Lightning writes the run's config.yaml to the cwd.
                with tempfile.TemporaryDirectory(prefix="dmac-speed-") as scratch:
                    result = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
                lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
                if result.returncode != 0 or not lines:
                    print(f"| {env} | {n_envs} | {algorithm} | failed: {result.stderr.strip().splitlines()[-1:]} | | | | | |", flush=True)
                    continue
                r = json.loads(lines[-1][len("RESULT "):])
                limits = r.get("scan_limit")
                limit_cells = f"{limits[0]:.0f} / {limits[1]:.0f} | {r['env_only'] / max(limits):.3f}" if limits else " | "
                print(f"| {env} | {n_envs} | {algorithm} | {r['env_only']:.0f} | {r['training']:.0f} | "
                      f"{r['training'] / r['env_only']:.3f} | {limit_cells} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
