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
time; an interrupted one resumes from its newest checkpoint. A run in progress holds ``running.json``
(host, the sweep's and its training's pids), so two sweeps over the same folder (say, one per core,
or more seeds added while the first still runs) never train the same run at once; a claim whose
processes have died is taken over.
Arguments after ``--`` go to every run, after its config files (e.g.
``-- --config configs/studies/reduced_stochastic_game.yaml``).

Each run's torch/OpenMP threads: ``--threads``, by default the cores shared out among ``--workers``
(all of them for one worker). Two sweeps side by side on a 2-core machine want ``--threads 1`` each:
otherwise every run spins two threads on a core it shares.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from callbacks.checkpoint import CrashCheckpoint
from dmac_lightning.algorithms import NAMES, algorithm

DONE = "done.json"
CLAIM = "running.json"


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


def _alive(claim: dict) -> bool:
    """Whether the sweep that claimed a run, or the training it started (which outlives a killed sweep), runs."""
    if claim.get("host") != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we leave it be
    for pid in (claim.get("pid"), claim.get("child")):
        if pid is None:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        return True
    return False


def claim(directory: str) -> dict | None:
    """Take the run in ``directory`` for this process (returns None), unless a live process holds it (returns its claim)."""
    path = os.path.join(directory, CLAIM)
    mine = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
            except FileNotFoundError:
                continue  # released as we read
            except ValueError:  # being written this instant, or left half-written by a process that died
                if time.time() - os.path.getmtime(path) < 30:
                    return {"host": "?", "pid": "?"}
                holder = {}
            if holder and _alive(holder):
                return holder
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(descriptor, "w") as f:
            json.dump(mine, f)
        return None
    raise RuntimeError(f"could not claim {directory}: {path} keeps reappearing")


def execute(run: Run, root: str, name: str, extra: list[str], threads: int | None) -> tuple[Run, int | str, float]:
    """Run one (config, seed) to its end; returncode 0 and 0 s when done before, a str when another holds it."""
    directory = run.directory(root, name)
    if os.path.exists(os.path.join(directory, DONE)):
        return run, 0, 0.0
    os.makedirs(directory, exist_ok=True)
    holder = claim(directory)
    if holder is not None:
        return run, f"running elsewhere: host {holder.get('host')}, pid {holder.get('pid')}", 0.0
    try:
        if os.path.exists(os.path.join(directory, DONE)):  # finished between our check and our claim
            return run, 0, 0.0
        environment = dict(os.environ)
        if threads:
            environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        argv = command(run, root, name, extra)
        started = time.perf_counter()
        with open(os.path.join(directory, "sweep.log"), "a") as log:
            training = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
            with open(os.path.join(directory, CLAIM + ".new"), "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "child": training.pid}, f)
            os.replace(os.path.join(directory, CLAIM + ".new"), os.path.join(directory, CLAIM))  # never half-written
            returncode = training.wait()
        duration = time.perf_counter() - started
        if returncode == 0:
            with open(os.path.join(directory, DONE), "w") as f:
                json.dump({"command": argv, "seconds": round(duration, 1)}, f, indent=1)
        return run, returncode, duration
    finally:
        try:
            os.remove(os.path.join(directory, CLAIM))
        except FileNotFoundError:
            pass


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
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch/OpenMP threads per run (default: the cores shared out among --workers, all for one)",
    )
    parser.add_argument("--root", default="runs")
    args = parser.parse_args(own)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}")
    configs = algorithm_configs(args.algorithms, args.env, args.map) if args.algorithms else args.configs
    runs = plan(configs, args.seeds, args.vary)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None)
    print(f"sweep {args.name}: {len(runs)} runs, {args.workers} at a time, into {os.path.join(args.root, args.name)}")
    failures = 0
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(execute, run, args.root, args.name, extra, threads) for run in runs]
        for index, future in enumerate(futures, 1):
            run, returncode, duration = future.result()
            if isinstance(returncode, str):
                status = f"skipped ({returncode})"
            elif returncode == 0:
                status = "skipped (done before)" if duration == 0 else "done"
            else:
                status = f"FAILED (exit {returncode}, see sweep.log)"
                failures += 1
            print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: {status} {duration:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
