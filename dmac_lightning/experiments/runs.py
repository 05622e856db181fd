"""Runs of a sweep: one (config files, seed) as an ordinary ``dmac fit`` in its own folder, claimed by one
process at a time, resumed from its newest checkpoint, marked done or failed. Several seeds of one run
train in one process (``dmac fit --seeds``, each seed still in its own folder) when grouped
(:func:`groups`). The local launcher (``experiments/sweep.py``) and the SLURM launcher
(``experiments/slurm.py``) both run runs through this module; it imports neither.
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

from callbacks.checkpoint import newest_resumable
from dmac_lightning.algorithms import NAMES, algorithm
from dmac_lightning.lockstep import SEED_RESULT

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


def groups(runs: list[Run], seeds_per_process: int | None = None) -> list[list[Run]]:
    """The runs that train together in one process: the seeds of one run (same label, config files and
    arguments), ``seeds_per_process`` at a time (None: all of them), in plan order."""
    if seeds_per_process is not None and seeds_per_process < 1:
        raise ValueError(f"--seeds-per-process must be at least 1; got {seeds_per_process}")
    by_run: dict[tuple, list[Run]] = {}
    for run in runs:
        by_run.setdefault((run.label, run.configs, run.arguments), []).append(run)
    size = seeds_per_process
    return [seeds[i : i + (size or len(seeds))] for seeds in by_run.values() for i in range(0, len(seeds), size or len(seeds))]


def command(run: Run | list[Run], root: str, name: str, extra: list[str]) -> list[str]:
    """``dmac fit`` for one run, or for several seeds of one run in one process (``--seeds s1,s2,...``), each
    resuming from its newest checkpoint when it has one."""
    group = run if isinstance(run, list) else [run]
    first = group[0]
    if len(group) == 1:
        saved = newest_resumable(first.directory(root, name))
        seeds = ["--seed_everything", str(first.seed)]
        version, resume = f"seed_{first.seed}", (["--ckpt_path", saved] if saved else [])
    else:
        seeds = ["--seeds", ",".join(str(r.seed) for r in group)]
        version = "seed_{seed}"  # each seed in its own folder, as a run alone would be
        resume = ["--ckpt_path", "last"] if any(newest_resumable(r.directory(root, name)) for r in group) else []
    return [
        sys.executable, "-m", "dmac_lightning", "fit", *(arg for path in first.configs for arg in ("--config", path)),
        *seeds,
        "--trainer.logger.init_args.save_dir", os.path.join(root, name),
        "--trainer.logger.init_args.name", first.label,
        "--trainer.logger.init_args.version", version,
        "--trainer.enable_progress_bar", "false",
        *first.arguments, *extra, *resume,
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
    return execute_group([run], root, name, extra, threads, job, on_start, ignored_signals)[0]


def execute_group(
    group: list[Run], root: str, name: str, extra: list[str], threads: int | None, job: str | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None, ignored_signals: tuple[int, ...] = (),
) -> list[tuple[Run, int | str, float]]:
    """``execute`` for seeds of one run trained in one process (``dmac fit --seeds``): the seeds done before
    are skipped, those another process holds are left to it, the rest train together; each seed is marked
    done or failed by how it ended (``seed_result.json``, which ``dmac fit --seeds`` writes)."""
    results: dict[Run, tuple[Run, int | str, float]] = {}
    claimed: list[Run] = []
    try:
        for run in group:
            directory = run.directory(root, name)
            if os.path.exists(os.path.join(directory, DONE)):
                results[run] = (run, 0, 0.0)
                continue
            os.makedirs(directory, exist_ok=True)
            holder = claim(directory, job)
            if holder is not None:
                results[run] = (run, f"running elsewhere: host {holder.get('host')}, pid {holder.get('pid')}", 0.0)
            elif os.path.exists(os.path.join(directory, DONE)):  # finished between our check and our claim
                _remove(os.path.join(directory, CLAIM))
                results[run] = (run, 0, 0.0)
            else:
                claimed.append(run)
        if claimed:
            results.update({run: outcome for run, outcome in zip(claimed, _train(claimed, root, name, extra, threads, job, on_start, ignored_signals))})
    finally:
        for run in claimed:
            _remove(os.path.join(run.directory(root, name), CLAIM))
    return [results[run] for run in group]


def _train(
    group: list[Run], root: str, name: str, extra: list[str], threads: int | None, job: str | None,
    on_start: Callable[[subprocess.Popen], None] | None, ignored_signals: tuple[int, ...],
) -> list[tuple[Run, int, float]]:
    directories = [run.directory(root, name) for run in group]
    environment = dict(os.environ)
    if threads:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    argv = command(group if len(group) > 1 else group[0], root, name, extra)
    log_path = os.path.join(directories[0], "sweep.log")
    if len(group) > 1:
        # One log for the process, seen from every seed's folder as its sweep.log.
        log_path = os.path.join(os.path.dirname(directories[0]), "sweep_seeds_" + "_".join(str(run.seed) for run in group) + ".log")
        for directory in directories:
            _remove(os.path.join(directory, SEED_RESULT))
            own_log = os.path.join(directory, "sweep.log")
            if os.path.islink(own_log):
                _remove(own_log)
            elif os.path.exists(own_log):  # a log of this seed trained alone before: kept, beside the shared one
                os.replace(own_log, os.path.join(directory, f"sweep.{int(time.time())}.log"))
            os.symlink(os.path.relpath(log_path, directory), os.path.join(directory, "sweep.log"))
    started = time.perf_counter()
    with open(log_path, "a") as log:
        ignore = (lambda: [signal.signal(number, signal.SIG_IGN) for number in ignored_signals]) if ignored_signals else None
        training = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=ignore)
        if on_start is not None:
            on_start(training)
        for directory in directories:
            with open(os.path.join(directory, CLAIM + ".new"), "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "child": training.pid, **({"job": job} if job else {})}, f)
            os.replace(os.path.join(directory, CLAIM + ".new"), os.path.join(directory, CLAIM))  # never half-written
        returncode = training.wait()
    duration = time.perf_counter() - started
    outcomes = []
    for run, directory in zip(group, directories):
        status = returncode
        if len(group) > 1:  # each seed by its own end; one the process did not report failed with the process
            try:
                with open(os.path.join(directory, SEED_RESULT)) as f:
                    status = int(json.load(f)["exit"])
            except (FileNotFoundError, ValueError, KeyError):
                status = returncode or 1
        if status == 0:
            with open(os.path.join(directory, DONE), "w") as f:
                json.dump({"command": argv, "seconds": round(duration, 1), **({"seeds_in_process": len(group)} if len(group) > 1 else {})}, f, indent=1)
            _remove(os.path.join(directory, FAILED))
        else:
            with open(os.path.join(directory, FAILED), "w") as f:
                json.dump({"exit": status, "log": os.path.join(directory, "sweep.log"), "job": job}, f, indent=1)
        outcomes.append((run, status, duration))
    return outcomes


def signal_process(pid: int, number: int) -> None:
    """Send signal ``number`` to process ``pid`` unless it has ended already."""
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs: one that ended but is not reaped yet does not. Never reaps it (a child of
    ours stays its ``Popen.wait``'s)."""
    if not os.path.isdir("/proc"):  # macOS: whether the pid exists at all (an unreaped child counts)
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
