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
processes have died is taken over. Ctrl-C or SIGTERM (``kill``) stops the sweep: the runs in progress
write their checkpoints and stop, no further run starts, and the same command resumes them.
The seeds of one run train together in one process (``dmac fit --seeds``: in lockstep, each exactly the
run it would be alone, each still in its own ``seed_<s>/`` folder with its own ``done.json``);
``--seeds-per-process K`` splits them into processes of K seeds (1: a process per seed, as before).
Arguments after ``--`` go to every run, after its config files (e.g.
``-- --config configs/studies/reduced_stochastic_game.yaml``).

Each run's torch/OpenMP threads: ``--threads``, by default the cores shared out among ``--workers``
(all of them for one worker). Two sweeps side by side on a 2-core machine want ``--threads 1`` each:
otherwise every run spins two threads on a core it shares.

``--launcher slurm`` submits every process (a run's seeds) as a task of a SLURM job array instead (``experiments/slurm.py``:
resources per run, pre-emption and requeue), into the same folders; ``--status`` shows every run of a
sweep, from either launcher: done, running, pending, failed (with its logs). A failed run leaves
``failed.json`` until it succeeds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from dmac_lightning.algorithms import NAMES
from dmac_lightning.lockstep import INTERRUPTED, STOPPED_BY_SIGTERM
from dmac_lightning.experiments.runs import (  # noqa: F401  (re-exported: the sweep's API as before)
    CLAIM, DONE, FAILED, Run, algorithm_configs, claim, command, execute, execute_group, groups, plan, process_running,
    signal_process, _remove,
)

NOT_STARTED = "not started: the sweep was stopped"


class LocalStop:
    """How a local sweep stops: ``SIGTERM`` (``kill``, a job scheduler) is passed on to every training it
    started, which writes its checkpoint and exits; Ctrl-C reaches the trainings from the terminal itself.
    Either way no further run starts, and the runs the stop ended stay resumable (no ``failed.json``: the
    same command resumes them). Without this a killed sweep left its trainings running on, unseen."""

    # The handler runs in the main thread while it waits on the workers: it signals and watches the trainings
    # by pid, never through Popen (whose lock a worker holds inside ``wait``).
    def __init__(self) -> None:
        self.signum: int | None = None
        self._training: dict[Run, int] = {}
        self._group_size: dict[Run, int] = {}
        self._running_at_stop: set[int] = set()
        self._terminated: set[int] = set()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "LocalStop":
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def execute_group(self, group: list[Run], *args: Any) -> list[tuple[Run, int | str, float]]:
        if self.stopped:
            return [(run, NOT_STARTED, 0.0) for run in group]
        return execute_group(group, *args, on_start=lambda training: self._started(group, training.pid))

    def ended_by_stop(self, run: Run, returncode: int) -> bool:
        """Whether the stop ended ``run``: its training still ran when the stop came, and, for a seed of a group
        (whose status is its own, from ``seed_result.json``), the seed stopped rather than failed before."""
        if self._training.get(run) not in self._running_at_stop:
            return False
        return self._group_size[run] == 1 or returncode in (STOPPED_BY_SIGTERM, INTERRUPTED)

    def _started(self, group: list[Run], pid: int) -> None:
        self._training.update({run: pid for run in group})
        self._group_size.update({run: len(group) for run in group})
        if self.stopped:  # started while the stop was being handled
            self._running_at_stop.add(pid)
            if self.signum == signal.SIGTERM:
                self._terminate(pid)

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = not self.stopped
        if first or signum == signal.SIGTERM:
            self.signum = signum
        running = {pid for pid in set(self._training.values()) if process_running(pid)}
        self._running_at_stop |= running
        if signum == signal.SIGTERM:
            for pid in running:
                self._terminate(pid)
        if first:
            print(f"sweep: {signal.Signals(signum).name}: the runs in progress write their checkpoints and stop; "
                  "no further run starts (the same command resumes them)", flush=True)

    def _terminate(self, pid: int) -> None:
        if pid not in self._terminated:  # once: a second SIGTERM could cut short a checkpoint being written
            self._terminated.add(pid)
            signal_process(pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the sweep's directory under --root")
    parser.add_argument("--status", action="store_true", help="show each run of the sweep: done, running, pending, failed (with its logs)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--algorithms", nargs="+", choices=[*NAMES, "all"], help="registered algorithms, or all ten")
    what.add_argument("--configs", nargs="+", help="config files, each a run of its own")
    parser.add_argument("--env", default="stochastic_game", help="with --algorithms: stochastic_game, smax, smac or smacv2")
    parser.add_argument("--map", default=None, help="with --algorithms on smax/smac: the map (configs/<env>/<map>.yaml)")
    parser.add_argument("--preset", default=None,
                        help="with --algorithms: each algorithm's file from configs/algorithms/<PRESET>/ (e.g. authors: the DMAC authors' code's settings); runs are labelled <algorithm>-<PRESET>")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--seeds-per-process", type=int, default=None,
        help="seeds of one run trained together in one process (dmac fit --seeds), each still in its own seed_<s> "
        "folder; default: all of a run's seeds; 1: a process per seed",
    )
    parser.add_argument("--vary", default=None, help="one setting over values, e.g. model.init_args.omega=0.1,1")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: a pool of processes on this machine (default); slurm: one SLURM job array task per run, through submitit")
    local = parser.add_argument_group("--launcher local")
    local.add_argument("--workers", type=int, default=1, help="processes at once (each one run's seeds, --seeds-per-process)")
    local.add_argument(
        "--threads", type=int, default=None,
        help="torch/OpenMP threads per run (default: the cores shared out among --workers, all for one)",
    )
    cluster = parser.add_argument_group("--launcher slurm (each run asks for these)")
    cluster.add_argument("--cpus-per-run", type=int, default=1, help="CPUs per run (also its torch threads)")
    cluster.add_argument("--gpus-per-run", type=int, default=0)
    cluster.add_argument("--mem", default=None, help="memory per run, as sbatch --mem takes it (e.g. 16G); a task of several seeds asks for it times its seeds")
    cluster.add_argument("--time", default=None, help="time limit per run, as sbatch --time takes it (e.g. 4:00:00), times the seeds of a task; a run stopped at it resumes")
    cluster.add_argument("--partition", default=None)
    cluster.add_argument("--sbatch", action="append", default=[], metavar="OPTION=VALUE",
                         help="any other sbatch option, repeatable (e.g. --sbatch account=mygroup --sbatch qos=low)")
    cluster.add_argument("--max-requeues", type=int, default=5,
                         help="times a run may be stopped by SLURM (pre-emption, time limit) and requeued before it counts as failed")
    cluster.add_argument("--signal-delay", type=int, default=120,
                         help="seconds before --time at which a run is told to checkpoint and requeue")
    cluster.add_argument("--max-running", type=int, default=None, help="at most this many runs at once (the array's %%N)")
    args = parser.parse_args(own)
    if args.status:
        return print_status(args.root, args.name)
    if not (args.algorithms or args.configs):
        parser.error("give --algorithms or --configs (or --status)")
    for flag in ("workers", "cpus_per_run"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1; got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}")
    if args.gpus_per_run not in (0, 1):
        parser.error(
            f"--gpus-per-run must be 0 or 1; got {args.gpus_per_run}: a sweep runs one process per task (for a run "
            "on several GPUs, start dmac fit with srun, one task per GPU: README, Scaling)"
        )
    if args.max_requeues < 0:
        parser.error(f"--max-requeues must be at least 0; got {args.max_requeues}")
    if args.preset and not args.algorithms:
        parser.error("--preset goes with --algorithms (it picks each algorithm's preset file)")
    try:
        configs = algorithm_configs(args.algorithms, args.env, args.map, args.preset) if args.algorithms else args.configs
    except ValueError as error:
        parser.error(str(error))
    runs = plan(configs, args.seeds, args.vary)
    if args.seeds_per_process is not None and args.seeds_per_process < 1:
        parser.error(f"--seeds-per-process must be at least 1; got {args.seeds_per_process}")
    batches = groups(runs, args.seeds_per_process)
    if args.launcher == "slurm":
        from dmac_lightning.experiments import slurm

        resources = slurm.Resources(
            args.cpus_per_run, args.gpus_per_run, args.mem, args.time, args.partition, args.signal_delay, args.max_running,
            tuple(args.sbatch),
        )
        submitted = slurm.submit(batches, args.root, args.name, extra, resources, args.max_requeues)
        count = sum(len(group) for group, _ in submitted)
        print(f"sweep {args.name}: {count} of {len(runs)} runs submitted to SLURM in {len(submitted)} tasks (the others are done), "
              f"into {os.path.join(args.root, args.name)}")
        for group, job in submitted:
            print(f"  {group[0].label} seed {', '.join(str(run.seed) for run in group)}: job {job}")
        print(f"watch it with: dmac-sweep --status --name {args.name}" + (f" --root {args.root}" if args.root != "runs" else ""))
        return 0
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None)
    print(f"sweep {args.name}: {len(runs)} runs in {len(batches)} processes, {args.workers} at a time, into {os.path.join(args.root, args.name)}")
    failures, index = 0, 0
    with LocalStop() as stop, ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(stop.execute_group, group, args.root, args.name, extra, threads) for group in batches]
        for future in futures:
            while not future.done():
                # Waiting in short slices: a signal may land on another thread of this process, and its
                # handler runs only when the main thread next runs Python (an endless wait would hold it).
                wait([future], timeout=0.5)
            for run, returncode, duration in future.result():
                index += 1
                if returncode == NOT_STARTED:
                    status = returncode
                elif isinstance(returncode, str):
                    status = f"skipped ({returncode})"
                elif returncode == 0:
                    status = "skipped (done before)" if duration == 0 else "done"
                elif stop.ended_by_stop(run, returncode):  # stopped, not failed: --status shows it as stopped, resumable
                    _remove(os.path.join(run.directory(args.root, args.name), FAILED))
                    status = "stopped (checkpoint written; the same command resumes it)"
                else:
                    status = f"FAILED (exit {returncode}, see sweep.log)"
                    failures += 1
                print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: {status} {duration:.0f} s", flush=True)
    if stop.stopped:
        return 128 + stop.signum
    return 1 if failures else 0



def print_status(root: str, name: str) -> int:
    """The ``--status`` table; exit status 1 when a run failed."""
    from dmac_lightning.experiments.slurm import status

    rows = status(root, name)
    width = max([len(label) for label, *_ in rows] + [3])
    counts: dict[str, int] = {}
    for label, seed, state, detail in rows:
        counts[state] = counts.get(state, 0) + 1
        print(f"{label:<{width}}  seed {seed:<3} {state:<12} {detail}".rstrip())
    print(f"sweep {name}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
