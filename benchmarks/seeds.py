"""Several seeds in one process (``dmac fit --seeds N``) against the same seeds one after another: a script
that prints figures (issue 29, item 5).

    python benchmarks/seeds.py --algorithm dop_dmac --env smax --seeds 5 --env-steps 3000
    python benchmarks/seeds.py --algorithm all --env stochastic_game --seeds 1 5 8 --env-steps 2000

One line per case:

    seeds <algorithm> <env> <N> batched <x> separate <y> ratio <x/y>

``x``: env steps per second of N seeds trained in lockstep in one process (N x ``--env-steps``, every seed
the same, over the wall time); ``y``: the same for the N seeds run one after another in this process (each a
plain ``dmac fit --seed_everything s``). ``ratio``: N seeds in one process cost N / ratio separate runs. Both at the algorithm's published schedule (its config files as the
registry composes them; SMAX: map 3m), with no evaluation, checkpoint or logger, and no warm-up episodes
(updates start once the buffer holds a batch), so that updates run from early on. A line after each case
splits the wall time into collection (``collect``: env steps, policy, episode assembly, buffer writes),
updates (``update``) and the rest (Lightning's loop, sampling, targets, hand-overs between seeds).

One torch thread unless ``--threads``. Each side runs in a process of its own, after a short untimed run
(imports, the JAX env's compilation), so that ``peak`` is that side's own maximum resident memory: N seeds in
one process hold N replay buffers but one Python, torch and JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import config_paths  # noqa: E402


class Clock:
    """Seconds spent inside the wrapped methods (outermost calls only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth = 0

    def wrap(self, owner: type, method: str, part: str) -> None:
        original = getattr(owner, method)
        clock = self

        def timed(*args, **kwargs):
            if clock._depth:
                return original(*args, **kwargs)
            clock._depth += 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock._depth -= 1
                clock.seconds[part] = clock.seconds.get(part, 0.0) + time.perf_counter() - started

        setattr(owner, method, timed)

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        self.seconds = {}
        started = time.perf_counter()
        result: dict[str, float] = {}
        yield result
        result.update(self.seconds, wall=time.perf_counter() - started)


def fit(arguments: list[str]) -> None:
    from dmac_lightning.cli import main

    try:
        main(["fit", *arguments])
    except SystemExit as end:
        if end.code not in (0, None):
            raise RuntimeError(f"dmac fit {' '.join(arguments)} exited with {end.code}") from None


def arguments(algorithm: str, env: str, env_steps: int, directory: str) -> list[str]:
    configs = config_paths(algorithm, env, "3m" if env == "smax" else None)
    return [
        *(arg for path in configs for arg in ("--config", path)),
        "--data.max_env_steps", str(env_steps), "--data.env_steps_per_epoch", str(env_steps),
        "--data.warmup_episodes", "0", "--evaluation.interval", str(10 * env_steps), "--evaluation.episodes", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.logger.init_args.save_dir", directory,
    ]


def arm(algorithm: str, env: str, seeds: int, env_steps: int, together: bool) -> dict[str, float]:
    """One side of a case, in this process: N seeds in lockstep (``together``) or one after another."""
    import resource

    import torch

    from datamodules import EpisodeDataModule
    from dmac_lightning.algorithms import MultiAgentModule

    clock = Clock()
    clock.wrap(EpisodeDataModule, "collect", "collect")
    clock.wrap(MultiAgentModule, "update", "update")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="dmac-seeds-") as directory:
        fit(arguments(algorithm, env, 200, os.path.join(directory, "warmup")))  # imports, JAX compile: not timed
        common = arguments(algorithm, env, env_steps, directory)
        with clock.measure() as parts:
            if together:
                fit([*common, "--seed_everything", "0", "--seeds", str(seeds)])
            else:
                for seed in range(seeds):
                    fit([*common, "--seed_everything", str(seed)])
    return {**parts, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_arm(algorithm: str, env: str, seeds: int, env_steps: int, together: bool, threads: int) -> dict[str, float]:
    """``arm`` in a fresh process (so that its peak memory is its own)."""
    command = [sys.executable, os.path.abspath(__file__), "--arm", "together" if together else "apart", "--algorithm", algorithm,
               "--env", env, "--seeds", str(seeds), "--env-steps", str(env_steps)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(result.stderr[-4000:])
    return json.loads(lines[-1])


def split(parts: dict[str, float]) -> str:
    collect, update, wall = parts.get("collect", 0.0), parts.get("update", 0.0), parts["wall"]
    return (f"collect {collect:.1f} s, update {update:.1f} s, rest {wall - collect - update:.1f} s of {wall:.1f} s, "
            f"peak {parts['peak_mb']:.0f} MB")


def main() -> None:
    from dmac_lightning.algorithms import NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", nargs="+", default=["dop_dmac"], help=f"algorithms, or all: {', '.join(NAMES)}")
    parser.add_argument("--env", nargs="+", default=["stochastic_game"], choices=("stochastic_game", "smax"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[5])
    parser.add_argument("--env-steps", type=int, default=2000, help="env steps per seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arm", choices=("together", "apart"), default=None, help=argparse.SUPPRESS)  # a child's side
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.algorithm[0], args.env[0], args.seeds[0], args.env_steps, args.arm == "together")), flush=True)
        return
    algorithms = list(NAMES) if args.algorithm == ["all"] else args.algorithm
    for env in args.env:
        for algorithm in algorithms:
            for seeds in args.seeds:
                batched = run_arm(algorithm, env, seeds, args.env_steps, True, args.threads)
                separate = run_arm(algorithm, env, seeds, args.env_steps, False, args.threads)
                x, y = seeds * args.env_steps / batched["wall"], seeds * args.env_steps / separate["wall"]
                print(f"seeds {algorithm} {env} {seeds} batched {x:.1f} separate {y:.1f} ratio {x / y:.3f}", flush=True)
                print(f"  batched: {split(batched)}; separate: {split(separate)}", flush=True)


if __name__ == "__main__":
    main()
