"""Runs of a sweep: one (config files, seed) as an ordinary ``dmac fit`` in its own folder, claimed by one
process at a time, resumed from its newest checkpoint, marked done or failed. The local launcher
(``experiments/sweep.py``) and the SLURM launcher (``experiments/slurm.py``) both run runs through this
module; it imports neither.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from callbacks.checkpoint import CrashCheckpoint
from dmac_lightning.algorithms import NAMES, algorithm

DONE = "done.json"
CLAIM = "running.json"
FAILED = "failed.json"


@dataclass(frozen=True)
class Run:
    configs: tuple[str, ...]
    label: str
    seed: int
    arguments: tuple[str, ...]

    def directory(self, root: str, name: str) -> str:
        return os.path.join(root, name, self.label, f"seed_{self.seed}")


def algorithm_configs(
    names: list[str], env: str = "stochastic_game", map_name: str | None = None, preset: str | None = None
) -> dict[str, tuple[str, ...]]:
    """Label -> config files of each algorithm (``all``: the ten) on ``env``; with ``preset`` (``authors``)
    each algorithm's preset file, labelled ``<name>-<preset>``."""
    names = list(NAMES) if names == ["all"] else names
    suffix = f"-{preset}" if preset else ""
    return {name + suffix: tuple(algorithm(name).configs(env, map_name, preset=preset)) for name in names}


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


def claim(directory: str, job: str | None = None) -> dict | None:
    """Take the run in ``directory`` for this process (returns None), unless a live process holds it (returns its claim).
    ``job``: this process's SLURM task, whose earlier incarnations' claims (before a requeue, maybe on another
    node) are its own."""
    path = os.path.join(directory, CLAIM)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), **({"job": job} if job else {})}
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
            if holder and _alive(holder) and not (job and holder.get("job") == job):
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


def execute(
    run: Run, root: str, name: str, extra: list[str], threads: int | None, job: str | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None, ignored_signals: tuple[int, ...] = (),
) -> tuple[Run, int | str, float]:
    """Run one (config, seed) to its end; returncode 0 and 0 s when done before, a str when another holds it.
    A run that fails leaves ``failed.json`` (its exit status and log) until it succeeds. ``job``: the SLURM
    task running it (``claim``); ``on_start`` gets the training process once it started; ``ignored_signals``:
    signals the training process ignores (meant for the process that starts it)."""
    directory = run.directory(root, name)
    if os.path.exists(os.path.join(directory, DONE)):
        return run, 0, 0.0
    os.makedirs(directory, exist_ok=True)
    holder = claim(directory, job)
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
            ignore = (lambda: [signal.signal(number, signal.SIG_IGN) for number in ignored_signals]) if ignored_signals else None
            training = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=ignore)
            if on_start is not None:
                on_start(training)
            with open(os.path.join(directory, CLAIM + ".new"), "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "child": training.pid, **({"job": job} if job else {})}, f)
            os.replace(os.path.join(directory, CLAIM + ".new"), os.path.join(directory, CLAIM))  # never half-written
            returncode = training.wait()
        duration = time.perf_counter() - started
        if returncode == 0:
            with open(os.path.join(directory, DONE), "w") as f:
                json.dump({"command": argv, "seconds": round(duration, 1)}, f, indent=1)
            _remove(os.path.join(directory, FAILED))
        else:
            with open(os.path.join(directory, FAILED), "w") as f:
                json.dump({"exit": returncode, "log": os.path.join(directory, "sweep.log"), "job": job}, f, indent=1)
        return run, returncode, duration
    finally:
        _remove(os.path.join(directory, CLAIM))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
