"""``dmac-sweep --launcher slurm``: the runs of a sweep as tasks of one SLURM job array, through submitit.

A task runs a group of runs (the seeds of one run that train in one process, ``dmac fit --seeds``; by
default all of its seeds, ``--seeds-per-process`` to change it) exactly as the local launcher does
(``execute_group``: the claims, ``dmac fit`` as a child process writing into ``<root>/<name>/<run>/seed_<s>/``,
``done.json`` at each seed's end), so ``dmac-plots`` and ``--status`` read either launcher's folders. A
task's memory and time limit are a run's (``--mem``, ``--time``) times its seeds: seeds in one process
keep a replay buffer each and train in turn. What SLURM adds:

* **Stops and requeues.** When SLURM stops a task (``SIGTERM`` before the kill, as on preemptible
  partitions, by ``scancel --signal=TERM``, or at ``--time``; or submitit's ``USR2`` ``--signal-delay``
  seconds before ``--time``), the training writes its checkpoint (``on_exception.ckpt``), the task
  requeues itself (``scontrol requeue``) and, started again, resumes from the newest checkpoint to the
  same env-step budget. At most ``--max-requeues`` times per run (default 5; ``SLURM_RESTART_COUNT``
  counts them): a run stopped more often is reported failed.
* **Failures are final.** A run whose training exits with an error for any other reason (a bad setting,
  a crash, a diverged run) is never requeued: it leaves ``failed.json`` (exit status, log paths) and the
  other tasks go on.
* ``slurm.json`` in each run's folder names its job, so ``--status`` can ask SLURM (``squeue``, then
  ``scontrol show job``; ``sacct`` where accounting is on) whether a run still waits or runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dmac_lightning.experiments.runs import CLAIM, DONE, FAILED, Run, _alive, execute_group, process_running, signal_process

INSTALL = "pip install 'dmac-lightning[slurm]'   (or: pip install submitit)"
SLURM_JOB = "slurm.json"


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SystemExit(f"dmac-sweep --launcher slurm needs submitit, which is not installed: {INSTALL}") from None
    return submitit


def task_id() -> str | None:
    """This SLURM task's id (``<array job>_<index>`` for an array task), or None outside SLURM."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


@dataclass
class SlurmRun:
    """A group of runs (seeds of one run) as one SLURM task (pickled by submitit; ``checkpoint`` is its
    preemption/time-limit hook)."""

    runs: list[Run]
    root: str
    name: str
    extra: list[str]
    threads: int | None
    cwd: str
    max_requeues: int = 5
    _child: Any = field(default=None, repr=False, compare=False)
    _stopped: bool = field(default=False, repr=False, compare=False)

    @property
    def directories(self) -> list[str]:
        return [run.directory(self.root, self.name) for run in self.runs]

    @property
    def what(self) -> str:
        return f"{self.runs[0].label} seed {', '.join(str(run.seed) for run in self.runs)}"

    def __call__(self) -> int:
        os.chdir(self.cwd)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)  # submitit's own handler ignores it
        try:
            # SLURM sends its warning (USR2) to every process of the task: the training must not die of it
            results = execute_group(
                self.runs, self.root, self.name, self.extra, self.threads, job=task_id(), on_start=self._started,
                ignored_signals=(signal.SIGUSR2,),
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        failed = [(run, returncode) for run, returncode, _ in results if returncode != 0]
        if not failed:
            self._forget(FAILED)
            return 0
        held = [returncode for _, returncode in failed if isinstance(returncode, str)]
        if held:  # another live process holds a run
            raise RuntimeError(f"{self.what}: {held[0]}")
        if self._stopped and self.requeues_left():
            self._forget(FAILED)
            self._requeue()
        for run, returncode in failed:
            self._fail(run, returncode if not self._stopped else f"stopped by SLURM {self.restarts + 1} times (--max-requeues {self.max_requeues})")
        statuses = ", ".join(f"seed {run.seed} exited with status {returncode}" for run, returncode in failed)
        raise RuntimeError(f"{self.runs[0].label}: {statuses}; see {', '.join(self.log(run) for run, _ in failed)}")

    # -- SLURM stopping the task --------------------------------------------------------------
    def _started(self, child: subprocess.Popen) -> None:
        self._child = child

    # Both hooks run as signal handlers in the main thread, which waits on the training process inside
    # ``Popen.wait`` and holds its lock: they signal and watch the process by pid, never through Popen.
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """SLURM stops the task: the training (which got the signal too) writes its checkpoint and exits."""
        self._stopped = True
        if self._child is not None:
            signal_process(self._child.pid, signal.SIGTERM)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on ``USR2`` (``--signal-delay`` before ``--time``, or a pre-emption notice): let
        the training write its checkpoint, then let submitit requeue this task (None: no requeue)."""
        submitit = require_submitit()
        self._stopped = True
        if self._child is not None:
            signal_process(self._child.pid, signal.SIGTERM)
            if not _wait_for_exit(self._child.pid, timeout=300):
                signal_process(self._child.pid, signal.SIGKILL)
        if not self.requeues_left():
            for run in self.runs:
                self._fail(run, f"stopped by SLURM {self.restarts + 1} times (--max-requeues {self.max_requeues})")
            return None
        return submitit.helpers.DelayedSubmission(SlurmRun(self.runs, self.root, self.name, self.extra, self.threads, self.cwd, self.max_requeues))

    @property
    def restarts(self) -> int:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))

    def requeues_left(self) -> bool:
        return self.restarts < self.max_requeues

    def _requeue(self) -> None:
        job = task_id()
        print(f"{self.what}: stopped by SLURM, checkpoint written; requeuing {job} "
              f"(restart {self.restarts + 1} of at most {self.max_requeues})", flush=True)
        subprocess.run(["scontrol", "requeue", str(job)], check=True)
        sys.exit(-1)  # SLURM ends this incarnation; the requeued one resumes from the checkpoint

    # -- what the run folders say -------------------------------------------------------------
    def log(self, run: Run) -> str:
        return os.path.join(run.directory(self.root, self.name), "sweep.log")

    def _fail(self, run: Run, reason: int | str) -> None:
        directory = run.directory(self.root, self.name)
        try:
            with open(os.path.join(directory, SLURM_JOB)) as f:
                slurm_log = json.load(f).get("slurm_log", "")
        except (FileNotFoundError, ValueError):
            slurm_log = ""
        record = {"job": task_id(), "exit": reason, "log": self.log(run), "slurm_log": slurm_log, "time": time.time()}
        with open(os.path.join(directory, FAILED), "w") as f:
            json.dump(record, f, indent=1)

    def _forget(self, filename: str) -> None:
        for directory in self.directories:
            try:
                os.remove(os.path.join(directory, filename))
            except FileNotFoundError:
                pass


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ended within ``timeout`` s, without reaping it (it stays ``Popen.wait``'s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_running(pid):
            return True
        time.sleep(0.2)
    return False


@dataclass(frozen=True)
class Resources:
    """What each run asks SLURM for (a task of several seeds: ``mem`` and ``time`` times its seeds)."""

    cpus: int = 1
    gpus: int = 0
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    signal_delay: int = 120
    max_running: int | None = None
    sbatch: tuple[str, ...] = ()

    def parameters(self, name: str, max_requeues: int, seeds: int = 1) -> dict[str, Any]:
        extra = {}
        for option in self.sbatch:
            key, _, value = option.lstrip("-").partition("=")
            extra[key.replace("-", "_")] = value if value else True
        parameters = {
            "job_name": f"dmac-{name}",
            "cpus_per_task": self.cpus,
            "ntasks_per_node": 1,
            "signal_delay_s": self.signal_delay,
            "max_num_timeout": max_requeues,
            "additional_parameters": {"requeue": True, **extra},
        }
        if self.gpus:
            parameters["gpus_per_node"] = self.gpus
        if self.mem:
            parameters["mem"] = scaled_memory(self.mem, seeds)
        if self.time:
            parameters["time"] = minutes(self.time) * seeds
            # warned in time to checkpoint: at most a quarter of a short limit before it (SLURM sends the signal
            # once the remaining time drops below the delay)
            parameters["signal_delay_s"] = min(self.signal_delay, max(10, parameters["time"] * 60 // 4))
        if self.partition:
            parameters["partition"] = self.partition
        if self.max_running:
            parameters["array_parallelism"] = self.max_running
        return parameters


def scaled_memory(value: str, factor: int) -> str:
    """``--mem`` as sbatch takes it (``16G``, ``4000``: megabytes) times ``factor``."""
    if factor == 1:
        return value
    number, unit = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", value, re.IGNORECASE).groups()
    return f"{math.ceil(float(number) * factor)}{unit.upper() or 'M'}"


def minutes(value: str) -> int:
    """``--time`` as SLURM writes it (``MM``, ``HH:MM:SS``, ``D-HH:MM``...) in whole minutes (at least 1)."""
    days, _, clock = value.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    if len(parts) == 1 and not days:
        total = parts[0]  # minutes
    else:
        while len(parts) < 3:
            parts = parts + [0.0] if days else [0.0] + parts
        hours, mins, secs = parts
        total = hours * 60 + mins + secs / 60
    total += float(days or 0) * 24 * 60
    return max(1, int(round(total)))


def submit(
    groups: list[list[Run]], root: str, name: str, extra: list[str], resources: Resources, max_requeues: int
) -> list[tuple[list[Run], str]]:
    """Submit each group of runs (seeds trained in one process; the runs not done yet) as a task of a job
    array; returns ``(group, task id)`` per task submitted. Returns at once."""
    submitit = require_submitit()
    root = os.path.abspath(root)
    pending = [[run for run in group if not os.path.exists(os.path.join(run.directory(root, name), DONE))] for group in groups]
    pending = [group for group in pending if group]
    if not pending:
        return []
    threads = resources.cpus
    cwd = os.getcwd()
    submitted = []
    for size in sorted({len(group) for group in pending}):  # one array per task size: its resources scale with it
        executor = submitit.SlurmExecutor(folder=os.path.join(root, name, ".submitit", "%j"), max_num_timeout=max_requeues)
        parameters = resources.parameters(name, max_requeues, seeds=size)
        executor.update_parameters(**{k: v for k, v in parameters.items() if k != "max_num_timeout"})
        sized = [group for group in pending if len(group) == size]
        with executor.batch():
            jobs = [executor.submit(SlurmRun(group, root, name, list(extra), threads, cwd, max_requeues)) for group in sized]
        submitted += list(zip(sized, jobs))
    for group, job in submitted:
        for run in group:
            directory = run.directory(root, name)
            os.makedirs(directory, exist_ok=True)
            for stale in (FAILED,):
                if os.path.exists(os.path.join(directory, stale)):
                    os.remove(os.path.join(directory, stale))
            with open(os.path.join(directory, SLURM_JOB), "w") as f:
                json.dump({"job": job.job_id, "submitted": time.time(), "slurm_log": str(job.paths.stdout)}, f, indent=1)
    return [(group, job.job_id) for group, job in submitted]


# -- the status view -------------------------------------------------------------------------------
def slurm_states(jobs: list[str]) -> dict[str, str]:
    """SLURM's state of each task id it still knows (``squeue``; then ``scontrol`` for ones just ended)."""
    states: dict[str, str] = {}
    if not jobs:
        return states
    try:
        listed = subprocess.run(["squeue", "-h", "-a", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return states
    for line in listed.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job] = state
    for job in jobs:
        if job in states:
            continue
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
        for token in shown.stdout.split():
            if token.startswith("JobState="):
                states[job] = token.split("=", 1)[1]
    return states


def run_status(directory: str, states: dict[str, str]) -> tuple[str, str]:
    """``(status, detail)`` of one run folder: done, failed (with its logs), running, pending or not started."""
    def read(filename: str) -> dict:
        try:
            with open(os.path.join(directory, filename)) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    if os.path.exists(os.path.join(directory, DONE)):
        return "done", f"{read(DONE).get('seconds', '?')} s"
    failed = read(FAILED)
    if failed:
        logs = ", ".join(path for path in (failed.get("log"), failed.get("slurm_log")) if path)
        return "failed", f"exit {failed.get('exit')}; logs: {logs}"
    job = read(SLURM_JOB).get("job")
    state = states.get(str(job)) if job else None
    claim = read(CLAIM)
    if state in ("RUNNING", "COMPLETING") or (claim and state is None and not job and _alive(claim)):
        return "running", f"job {job}" if job else f"pid {claim.get('pid')}"
    if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING"):
        return "pending", f"job {job} ({state.lower()})"
    if job and state is not None:  # ended in SLURM's eyes without done.json or failed.json
        return "failed", f"job {job} {state.lower()}; logs: {os.path.join(directory, 'sweep.log')}, {read(SLURM_JOB).get('slurm_log', '')}"
    if job:
        return "unknown", f"job {job}: SLURM no longer lists it and the run left neither done.json nor failed.json"
    if os.path.exists(os.path.join(directory, "sweep.log")):
        return "stopped", "interrupted; the next sweep resumes it from its checkpoint"
    return "not started", ""


def status(root: str, name: str) -> list[tuple[str, int, str, str]]:
    """``(run, seed, status, detail)`` for every run folder of sweep ``name``."""
    base = os.path.join(root, name)
    if not os.path.isdir(base):
        raise SystemExit(f"dmac-sweep --status: no sweep {name!r} under {root}")
    folders = sorted(
        (label, int(seed_dir.removeprefix("seed_")), os.path.join(base, label, seed_dir))
        for label in os.listdir(base)
        if not label.startswith(".") and os.path.isdir(os.path.join(base, label))
        for seed_dir in os.listdir(os.path.join(base, label))
        if seed_dir.startswith("seed_") and seed_dir.removeprefix("seed_").isdigit()
    )
    jobs = []
    for _, _, directory in folders:
        try:
            with open(os.path.join(directory, SLURM_JOB)) as f:
                jobs.append(str(json.load(f)["job"]))
        except (FileNotFoundError, ValueError, KeyError):
            pass
    states = slurm_states(jobs)
    return [(label, seed, *run_status(directory, states)) for label, seed, directory in folders]
