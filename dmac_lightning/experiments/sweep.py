"""Run configs x seeds (x one varied setting) as ordinary ``dmac fit`` runs; resumable.

    python -m dmac_lightning.experiments.sweep --name fig1 \\
        --configs configs/stochastic_game/coma.yaml configs/stochastic_game/coma_dmac.yaml \\
        --seeds 0 1 2 3 4 --workers 2 -- --data.max_env_steps 200000

    python -m dmac_lightning.experiments.sweep --name omega --configs configs/stochastic_game/coma_dmac.yaml \\
        --vary model.init_args.omega=0.001,0.01,0.1,0.2,1,10,100 -- --data.max_env_steps 200000

Each run writes its TensorBoard log, config and checkpoints to ``<root>/<name>/<run>/seed_<s>/``
(``<run>`` is the config's name, plus ``-<setting><value>`` when varying). A finished run leaves
``done.json`` there and is skipped next time; an interrupted one resumes from its ``last.ckpt``.
Arguments after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from callbacks.checkpoint import CrashCheckpoint

DONE = "done.json"


@dataclass(frozen=True)
class Run:
    config: str
    label: str
    seed: int
    arguments: tuple[str, ...]

    def directory(self, root: str, name: str) -> str:
        return os.path.join(root, name, self.label, f"seed_{self.seed}")


def plan(configs: list[str], seeds: list[int], vary: str | None = None) -> list[Run]:
    """Every (config, value of the varied setting, seed) combination."""
    variants: list[tuple[str, tuple[str, ...]]] = [("", ())]
    if vary:
        key, _, values = vary.partition("=")
        if not values:
            raise ValueError(f"--vary must look like KEY=V1,V2,...; got {vary!r}")
        leaf = key.rsplit(".", 1)[-1]
        variants = [(f"-{leaf}{value}", (f"--{key}", value)) for value in values.split(",")]
    runs = []
    for config in configs:
        stem = os.path.splitext(os.path.basename(config))[0]
        for suffix, arguments in variants:
            for seed in seeds:
                runs.append(Run(config, stem + suffix, seed, arguments))
    return runs


def command(run: Run, root: str, name: str, extra: list[str]) -> list[str]:
    directory = run.directory(root, name)
    # The newer of the last epoch's checkpoint and the one a crash wrote.
    saved = [os.path.join(directory, "checkpoints", f) for f in ("last.ckpt", CrashCheckpoint.FILENAME)]
    saved = [path for path in saved if os.path.exists(path)]
    resume = ["--ckpt_path", max(saved, key=os.path.getmtime)] if saved else []
    return [
        sys.executable, "-m", "dmac_lightning", "fit", "--config", run.config,
        "--seed_everything", str(run.seed),
        "--trainer.logger.init_args.save_dir", os.path.join(root, name),
        "--trainer.logger.init_args.name", run.label,
        "--trainer.logger.init_args.version", f"seed_{run.seed}",
        "--trainer.enable_progress_bar", "false",
        *run.arguments, *extra, *resume,
    ]


def execute(run: Run, root: str, name: str, extra: list[str], threads: int | None) -> tuple[Run, int, float]:
    directory = run.directory(root, name)
    if os.path.exists(os.path.join(directory, DONE)):
        return run, 0, 0.0
    os.makedirs(directory, exist_ok=True)
    environment = dict(os.environ)
    if threads:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    argv = command(run, root, name, extra)
    started = time.perf_counter()
    with open(os.path.join(directory, "sweep.log"), "a") as log:
        returncode = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
    duration = time.perf_counter() - started
    if returncode == 0:
        with open(os.path.join(directory, DONE), "w") as f:
            json.dump({"command": argv, "seconds": round(duration, 1)}, f, indent=1)
    return run, returncode, duration


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the sweep's directory under --root")
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--vary", default=None, help="one setting over values, e.g. model.init_args.omega=0.1,1")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (each its own process)")
    parser.add_argument("--root", default="runs")
    args = parser.parse_args(own)
    runs = plan(args.configs, args.seeds, args.vary)
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None
    print(f"sweep {args.name}: {len(runs)} runs, {args.workers} at a time, into {os.path.join(args.root, args.name)}")
    failures = 0
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(execute, run, args.root, args.name, extra, threads) for run in runs]
        for index, future in enumerate(futures, 1):
            run, returncode, duration = future.result()
            status = "done" if returncode == 0 else f"FAILED (exit {returncode}, see sweep.log)"
            status = "skipped (done before)" if returncode == 0 and duration == 0 else status
            failures += returncode != 0
            print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: {status} {duration:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
