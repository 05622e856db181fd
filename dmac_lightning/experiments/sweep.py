"""Run algorithms (or config files) x seeds (x one varied setting) as ordinary ``dmac fit`` runs; resumable.

    dmac-sweep --name fig1 --algorithms all --seeds 0 1 2 3 4 --workers 2 -- --data.max_env_steps 200000
    dmac-sweep --name smax --algorithms qmix qmix_dmac --env smax --map 3m --seeds 0 1 2
    dmac-sweep --name omega --algorithms coma_dmac \\
        --vary model.init_args.omega=0.001,0.01,0.1,0.2,1,10,100 -- --data.max_env_steps 200000
    dmac-sweep --name mine --configs my_run.yaml --seeds 0 1

An algorithm runs with the config files the registry composes for ``--env`` (the stochastic game by
default); a ``--configs`` file runs alone. Each run writes its TensorBoard log, config and
checkpoints to ``<root>/<name>/<run>/seed_<s>/`` (``<run>``: the algorithm's or config's name, plus
``-<setting><value>`` when varying). A finished run leaves ``done.json`` there and is skipped next
time; an interrupted one resumes from its newest checkpoint. Arguments after ``--`` go to every run,
after its config files (e.g. ``-- --config configs/studies/reduced_stochastic_game.yaml``).
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
from dmac_lightning.algorithms import NAMES, algorithm

DONE = "done.json"


@dataclass(frozen=True)
class Run:
    configs: tuple[str, ...]
    label: str
    seed: int
    arguments: tuple[str, ...]

    def directory(self, root: str, name: str) -> str:
        return os.path.join(root, name, self.label, f"seed_{self.seed}")


def algorithm_configs(names: list[str], env: str = "stochastic_game", map_name: str | None = None) -> dict[str, tuple[str, ...]]:
    """Label -> config files of each algorithm (``all``: the ten) on ``env``."""
    names = list(NAMES) if names == ["all"] else names
    return {name: tuple(algorithm(name).configs(env, map_name)) for name in names}


def plan(configs: list[str] | dict[str, tuple[str, ...]], seeds: list[int], vary: str | None = None) -> list[Run]:
    """Every (run, value of the varied setting, seed) combination. ``configs``: label -> config files,
    or single config files (labelled by their name)."""
    if not isinstance(configs, dict):
        configs = {os.path.splitext(os.path.basename(path))[0]: (path,) for path in configs}
    variants: list[tuple[str, tuple[str, ...]]] = [("", ())]
    if vary:
        key, _, values = vary.partition("=")
        if not values:
            raise ValueError(f"--vary must look like KEY=V1,V2,...; got {vary!r}")
        leaf = key.rsplit(".", 1)[-1]
        variants = [(f"-{leaf}{value}", (f"--{key}", value)) for value in values.split(",")]
    return [
        Run(tuple(files), label + suffix, seed, arguments)
        for label, files in configs.items()
        for suffix, arguments in variants
        for seed in seeds
    ]


def command(run: Run, root: str, name: str, extra: list[str]) -> list[str]:
    directory = run.directory(root, name)
    # The newer of the last epoch's checkpoint and the one a crash wrote.
    saved = [os.path.join(directory, "checkpoints", f) for f in ("last.ckpt", CrashCheckpoint.FILENAME)]
    saved = [path for path in saved if os.path.exists(path)]
    resume = ["--ckpt_path", max(saved, key=os.path.getmtime)] if saved else []
    return [
        sys.executable, "-m", "dmac_lightning", "fit", *(arg for path in run.configs for arg in ("--config", path)),
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
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--algorithms", nargs="+", choices=[*NAMES, "all"], help="registered algorithms, or all ten")
    what.add_argument("--configs", nargs="+", help="config files, each a run of its own")
    parser.add_argument("--env", default="stochastic_game", help="with --algorithms: stochastic_game, smax, smac or smacv2")
    parser.add_argument("--map", default=None, help="with --algorithms on smax/smac: the map (configs/<env>/<map>.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--vary", default=None, help="one setting over values, e.g. model.init_args.omega=0.1,1")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (each its own process)")
    parser.add_argument("--root", default="runs")
    args = parser.parse_args(own)
    configs = algorithm_configs(args.algorithms, args.env, args.map) if args.algorithms else args.configs
    runs = plan(configs, args.seeds, args.vary)
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
