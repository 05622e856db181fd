"""Helpers shared by the benchmark scripts (scripts that print figures; never tests)."""

from __future__ import annotations

import glob
import os
import statistics
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_paths(name: str, env: str = "stochastic_game", map_name: str | None = None) -> list[str]:
    """The config files of algorithm ``name`` on ``env``, as the registry composes them."""
    from dmac_lightning.algorithms import algorithm

    return algorithm(name).configs(env, map_name, root=os.path.join(ROOT, "configs"))


def run_fit(configs: list[str], *args: str, cwd: str | None = None) -> str:
    """Run ``dmac fit`` with ``configs`` in a fresh directory; returns the run directory."""
    cwd = cwd or tempfile.mkdtemp(prefix="dmac-bench-")
    command = [sys.executable, "-m", "dmac_lightning", "fit", *(arg for path in configs for arg in ("--config", path)),
               "--trainer.enable_progress_bar", "false", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-4000:])
    (run_dir,) = glob.glob(os.path.join(cwd, "lightning_logs", "*", "*", "version_0"))
    return run_dir


def scalar(run_dir: str, tag: str) -> list[tuple[int, float]]:
    values = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [(e.step, e.value) for e in events.Scalars(tag)]
    return values


def steady_throughput(run_dir: str) -> float:
    """Median training-loop env steps/s, skipping the first fifth of the run (warm-up, buffer filling)."""
    values = [v for _, v in scalar(run_dir, "train/env_steps_per_s")]
    return statistics.median(values[len(values) // 5 :])
