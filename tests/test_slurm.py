"""``dmac-sweep --launcher slurm`` against a real single-node SLURM (slurmctld, slurmd, munged), started
by the fixture below. Skipped, with the reason, where SLURM cannot start (not root, not installed);
`.ci/run` installs it, so CI runs these."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, SMALL_GAME
from dmac_lightning.experiments import slurm as slurm_launcher
from slurm_cluster import Cluster, unavailable

pytest.importorskip("submitit", reason="the [slurm] extra (make test installs it)")
WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no SLURM here: {WHY_NOT}")

TINY = [
    "--data.env_kwargs", json.dumps(SMALL_GAME), "--data.env_steps_per_epoch", "200",
    "--evaluation.interval", "200", "--evaluation.episodes", "4",
]


@pytest.fixture(scope="module")
def cluster():
    directory = tempfile.mkdtemp(prefix="slurm", dir="/tmp")  # short: munge's socket path has a length limit
    try:
        with Cluster(directory) as env:
            yield env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sweep(env, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "dmac_lightning.experiments.sweep", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def wait_until(predicate, timeout: float, what: str, env=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    queue = subprocess.run(["squeue"], env=env, capture_output=True, text=True).stdout if env else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{queue}")


def job_ids(output: str) -> list[str]:
    return [line.rsplit("job ", 1)[1].strip() for line in output.splitlines() if ": job " in line]


def status(env, root, name) -> dict[tuple[str, int], tuple[str, str]]:
    result = sweep(env, "--status", "--name", name, "--root", root, check=False)
    rows = {}
    for line in result.stdout.splitlines()[:-1]:
        label, _, seed, state, *detail = line.split(None, 4) + [""]
        rows[(label, int(seed))] = (state, " ".join(detail).strip())
    return rows


def layout(directory: str) -> set[str]:
    """A run folder's files, as names (event files and epoch checkpoints by kind)."""
    names = set()
    for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
        name = os.path.relpath(path, directory)
        if name.startswith("events.out.tfevents"):
            name = "events.out.tfevents"
        elif name.startswith(os.path.join("checkpoints", "epoch=")):
            name = os.path.join("checkpoints", "epoch=*.ckpt")
        names.add(name)
    return names


def test_a_sweep_submitted_through_sbatch_completes_laid_out_as_a_local_sweep(cluster, tmp_path):
    """A run's two seeds go as one task (one process, ``dmac fit --seeds``), asking for twice a run's time; each
    seed lands in its own folder as the local launcher lays it out."""
    root = str(tmp_path / "runs")
    started = time.monotonic()
    submitted = sweep(cluster, "--name", "pair", "--algorithms", "coma", "--seeds", "0", "1", "--root", root,
                      "--launcher", "slurm", "--cpus-per-run", "1", "--time", "10", "--", *TINY, "--data.max_env_steps", "400")
    assert time.monotonic() - started < 60  # returns once submitted, not when trained
    jobs = job_ids(submitted.stdout)
    assert len(jobs) == 1 and all(jobs) and "coma seed 0, 1: job" in submitted.stdout, submitted.stdout
    shown = subprocess.run(["scontrol", "-o", "show", "job", jobs[0]], env=cluster, capture_output=True, text=True).stdout
    assert "TimeLimit=00:20:00" in shown or os.path.exists(os.path.join(root, "pair", "coma", "seed_0", "done.json")), shown

    done = [os.path.join(root, "pair", "coma", f"seed_{s}", "done.json") for s in (0, 1)]
    wait_until(lambda: all(map(os.path.exists, done)), 300, "both runs' done.json", cluster)
    assert {run: state for run, (state, _) in status(cluster, root, "pair").items()} == {("coma", 0): "done", ("coma", 1): "done"}

    # The same seeds through the local launcher: the same files (plus the SLURM job record), the same events.
    local_root = str(tmp_path / "local")
    sweep(dict(cluster), "--name", "pair", "--algorithms", "coma", "--seeds", "0", "1", "--root", local_root, "--",
          *TINY, "--data.max_env_steps", "400")
    for seed in (0, 1):
        run_dir, local_dir = (os.path.join(base, "pair", "coma", f"seed_{seed}") for base in (root, local_root))
        assert layout(run_dir) == layout(local_dir) | {slurm_launcher.SLURM_JOB}
        tags = {}
        for directory in (run_dir, local_dir):
            events = EventAccumulator(directory)
            events.Reload()
            tags[directory] = set(events.Tags()["scalars"])
            assert max(e.step for e in events.Scalars("train/episode_return")) >= 400
        assert tags[run_dir] == tags[local_dir]


def test_a_run_stopped_by_sigterm_requeues_and_resumes_to_its_full_budget(cluster, tmp_path):
    root, budget = str(tmp_path / "runs"), 100_000  # about a minute of COMA on the small game: stopped well before the end
    submitted = sweep(cluster, "--name", "stop", "--algorithms", "coma", "--seeds", "0", "--root", root, "--launcher", "slurm",
                      "--time", "10", "--", *TINY, "--data.env_steps_per_epoch", "2000", "--evaluation.interval", "50000",
                      "--data.max_env_steps", str(budget))
    (job,) = job_ids(submitted.stdout)
    run_dir = os.path.join(root, "stop", "coma", "seed_0")
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    wait_until(lambda: os.path.exists(last), 300, "the first checkpoint", cluster)
    assert status(cluster, root, "stop")[("coma", 0)][0] == "running"

    subprocess.run(["scancel", "--signal=TERM", job], env=cluster, check=True)  # as SLURM does before a pre-emption's kill
    def requeued() -> bool:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=cluster, capture_output=True, text=True).stdout
        return "Restarts=1" in shown
    wait_until(requeued, 120, "the requeue", cluster)
    stopped_at = torch.load(os.path.join(run_dir, "checkpoints", "on_exception.ckpt"), weights_only=True)["EpisodeDataModule"]["env_steps"]
    assert 0 < stopped_at < budget
    assert status(cluster, root, "stop")[("coma", 0)][0] in ("pending", "running")
    # SLURM holds a requeued job back for about two minutes; let it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster, capture_output=True)

    wait_until(lambda: os.path.exists(os.path.join(run_dir, "done.json")), 300, "the resumed run's done.json", cluster)
    final = torch.load(last, weights_only=True)["EpisodeDataModule"]
    assert final["env_steps"] >= budget
    log = open(os.path.join(run_dir, "sweep.log")).read()
    assert "Restored all states from the checkpoint" in log and "on_exception.ckpt" in log
    events = EventAccumulator(run_dir)
    events.Reload()
    steps = [e.step for e in events.Scalars("train/episode_return")]
    assert min(s for s in steps if s > stopped_at) <= stopped_at + 200  # went on from the checkpoint, not from 0
    assert not os.path.exists(os.path.join(run_dir, slurm_launcher.FAILED))


def test_a_failing_run_is_reported_failed_with_its_log_and_the_other_completes(cluster, tmp_path):
    good = os.path.join(ROOT, "configs", "algorithms", "coma.yaml")
    settings = yaml.safe_load(open(good))
    settings["model"]["init_args"]["gamma"] = 2.0  # outside [0, 1]: the CLI refuses it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(settings))
    root = str(tmp_path / "runs")
    sweep(cluster, "--name", "mixed", "--configs", good, str(bad), "--seeds", "0", "--root", root,
          "--launcher", "slurm", "--", "--config", os.path.join(ROOT, "configs", "stochastic_game", "game.yaml"), *TINY,
          "--data.max_env_steps", "400")
    failed_record = os.path.join(root, "mixed", "bad", "seed_0", slurm_launcher.FAILED)
    wait_until(
        lambda: os.path.exists(failed_record) and os.path.exists(os.path.join(root, "mixed", "coma", "seed_0", "done.json")),
        300, "one failure and one success", cluster,
    )
    rows = status(cluster, root, "mixed")
    assert rows[("coma", 0)][0] == "done"
    state, detail = rows[("bad", 0)]
    assert state == "failed" and "exit 2" in detail
    log = os.path.join(root, "mixed", "bad", "seed_0", "sweep.log")
    assert log in detail and "model.gamma" in open(log).read()  # the log says why
    assert sweep(cluster, "--status", "--name", "mixed", "--root", root, check=False).returncode == 1
    time.sleep(3)
    shown = subprocess.run(["scontrol", "-o", "show", "job", json.load(open(failed_record))["job"]], env=cluster,
                           capture_output=True, text=True).stdout
    assert "Restarts=0" in shown  # a failure is never requeued
