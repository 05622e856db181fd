"""The sweep runner's planning and resume logic, and the plots/table on tiny synthetic logs."""

import json
import os
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from dmac_lightning.experiments import plots, runs, sweep


def test_plan_covers_configs_variants_and_seeds():
    runs = sweep.plan(["a/coma.yaml", "a/coma_dmac.yaml"], [0, 1])
    assert [(r.label, r.seed) for r in runs] == [("coma", 0), ("coma", 1), ("coma_dmac", 0), ("coma_dmac", 1)]
    varied = sweep.plan(["a/coma_dmac.yaml"], [3], vary="model.init_args.omega=0.1,10")
    assert [(r.label, r.arguments) for r in varied] == [
        ("coma_dmac-omega0.1", ("--model.init_args.omega", "0.1")),
        ("coma_dmac-omega10", ("--model.init_args.omega", "10")),
    ]
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        sweep.plan(["a.yaml"], [0], vary="omega")


def test_algorithms_run_with_the_config_files_the_registry_composes(tmp_path):
    (game,) = sweep.plan(sweep.algorithm_configs(["coma_dmac"]), [0])
    assert game.configs == (
        "configs/algorithms/coma_dmac.yaml", "configs/stochastic_game/game.yaml", "configs/stochastic_game/dmac.yaml"
    )
    (baseline,) = sweep.plan(sweep.algorithm_configs(["coma"]), [0])
    assert baseline.configs == ("configs/algorithms/coma.yaml", "configs/stochastic_game/game.yaml")
    (smax,) = sweep.plan(sweep.algorithm_configs(["qmix_dmac"], "smax", "3m"), [1])
    assert smax.configs == ("configs/smax/3m.yaml", "configs/algorithms/qmix_dmac.yaml") and smax.label == "qmix_dmac"
    argv = sweep.command(smax, str(tmp_path), "sw", ["--config", "extra.yaml"])
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    assert configs == ["configs/smax/3m.yaml", "configs/algorithms/qmix_dmac.yaml", "extra.yaml"]  # extras last
    assert len(sweep.plan(sweep.algorithm_configs(["all"]), [0])) == 10


def test_runs_are_skipped_when_done_and_resumed_from_their_checkpoint(tmp_path, monkeypatch):
    run = sweep.plan(sweep.algorithm_configs(["coma"]), [2])[0]
    directory = run.directory(str(tmp_path), "sw")
    assert directory == str(tmp_path / "sw" / "coma" / "seed_2")
    fresh = sweep.command(run, str(tmp_path), "sw", ["--data.max_env_steps", "10"])
    assert "--ckpt_path" not in fresh and fresh[-2:] == ["--data.max_env_steps", "10"]
    assert fresh[fresh.index("--seed_everything") + 1] == "2"
    assert fresh[fresh.index("--trainer.logger.init_args.version") + 1] == "seed_2"

    os.makedirs(os.path.join(directory, "checkpoints"))
    open(os.path.join(directory, "checkpoints", "last.ckpt"), "w").close()
    resumed = sweep.command(run, str(tmp_path), "sw", [])
    assert resumed[-2:] == ["--ckpt_path", os.path.join(directory, "checkpoints", "last.ckpt")]
    crashed = os.path.join(directory, "checkpoints", "on_exception.ckpt")  # a crash after the last epoch
    open(crashed, "w").close()
    os.utime(crashed, (os.path.getmtime(crashed) + 10,) * 2)
    assert sweep.command(run, str(tmp_path), "sw", [])[-2:] == ["--ckpt_path", crashed]

    calls = FakeTraining.record(monkeypatch)
    sweep.execute(run, str(tmp_path), "sw", [], threads=1)
    assert len(calls) == 1 and json.load(open(os.path.join(directory, sweep.DONE)))["command"] == calls[0][0]
    sweep.execute(run, str(tmp_path), "sw", [], threads=1)  # done: not run again
    assert len(calls) == 1


class FakeTraining:
    """Stands in for the ``dmac fit`` process: records its argv and environment, and the claim it saw."""

    def __init__(self, argv, env, calls, **kwargs):
        self.pid = os.getpid()
        self.argv, self.calls = argv, calls
        calls.append((argv, env))

    def wait(self):
        value = lambda flag: self.argv[self.argv.index(f"--trainer.logger.init_args.{flag}") + 1]  # noqa: E731
        directory = os.path.join(value("save_dir"), value("name"), value("version"))
        self.calls[-1] += (os.path.exists(os.path.join(directory, "running.json")),)
        return 0

    @classmethod
    def record(cls, monkeypatch) -> list:
        calls = []
        monkeypatch.setattr(runs.subprocess, "Popen", lambda argv, **kwargs: cls(argv, calls=calls, **kwargs))
        return calls


def test_a_run_claimed_by_a_live_process_is_left_alone_and_a_dead_claim_taken_over(tmp_path, monkeypatch):
    run = sweep.plan(sweep.algorithm_configs(["coma"]), [0])[0]
    directory = run.directory(str(tmp_path), "sw")
    os.makedirs(directory)
    claim_file = os.path.join(directory, sweep.CLAIM)
    dead_pid = 2**22 + 1  # above any Linux pid_max: stands for a sweep (and its training) that died without releasing its run
    calls = FakeTraining.record(monkeypatch)

    assert sweep.claim(directory) is None  # ours now
    assert sweep.claim(directory) == {"host": runs.socket.gethostname(), "pid": os.getpid()}  # a second sweep
    _, status, seconds = sweep.execute(run, str(tmp_path), "sw", [], threads=None)
    assert calls == [] and seconds == 0.0 and f"pid {os.getpid()}" in status

    with open(claim_file, "w") as f:
        json.dump({"host": runs.socket.gethostname(), "pid": dead_pid, "child": dead_pid}, f)
    _, status, _ = sweep.execute(run, str(tmp_path), "sw", [], threads=None)
    assert status == 0 and len(calls) == 1
    assert calls[0][2], "the run is claimed while it trains"
    assert not os.path.exists(claim_file) and os.path.exists(os.path.join(directory, sweep.DONE))

    with open(claim_file, "w") as f:  # a training whose sweep was killed: its child still runs
        json.dump({"host": runs.socket.gethostname(), "pid": dead_pid, "child": os.getpid()}, f)
    assert sweep.claim(directory)["child"] == os.getpid()


def test_threads_per_run_follow_workers_unless_given(tmp_path, monkeypatch):
    calls = FakeTraining.record(monkeypatch)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 4)
    common = ["--algorithms", "coma", "--seeds", "0", "--root", str(tmp_path)]
    assert sweep.main(["--name", "one", *common]) == 0
    assert calls[-1][1].get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")  # one worker: all cores
    assert sweep.main(["--name", "two", "--workers", "2", *common]) == 0
    assert calls[-1][1]["OMP_NUM_THREADS"] == "2" and calls[-1][1]["MKL_NUM_THREADS"] == "2"
    assert sweep.main(["--name", "side_by_side", "--threads", "1", *common]) == 0
    assert calls[-1][1]["OMP_NUM_THREADS"] == "1"
    with pytest.raises(SystemExit):
        sweep.main(["--name", "bad", "--threads", "0", *common])


def write_run(root, label, seed, ratio_end, cover_end, steps=(0, 5000, 10000)):
    writer = SummaryWriter(os.path.join(root, label, f"seed_{seed}"))
    for i, step in enumerate(steps):
        fraction = i / (len(steps) - 1)
        writer.add_scalar("eval/return_ratio", 0.1 + fraction * (ratio_end - 0.1) + 0.01 * seed, step)
        writer.add_scalar("train/cover_rate", fraction * cover_end, step)
    writer.close()


def test_plots_and_table_from_synthetic_logs(tmp_path):
    runs, omega_runs, out = tmp_path / "fig1", tmp_path / "omega", tmp_path / "out"
    for seed in range(3):
        write_run(runs, "coma", seed, 0.5, 0.3)
        write_run(runs, "coma_dmac", seed, 0.8, 0.6)
        write_run(runs, "qmix_dmac", seed, 0.7, 0.5)
        for omega, end in (("0.01", 0.6), ("1", 0.9)):
            write_run(omega_runs, f"coma_dmac-omega{omega}", seed, end, float(omega) / 2)
    plots.main(["--runs", str(runs), "--out", str(out), "--omega-runs", str(omega_runs)])
    for name in ("learning_curves.png", "cover_rate.png", "omega_sweep.png", "performance_profile.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = (out / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "seeds" not in line and "family" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["coma", "coma_dmac", "qmix_dmac", "COMA", "0.01", "1"]
    # coma_dmac's final ratio: mean over the 3 seeds of 0.8 + 0.01 * seed = 0.81
    # cover rate: final 0.6; over training the line from 0 to 0.6 averages 0.3
    # (IQM of 0.80, 0.81, 0.82: trim_mean cuts int(0.25 * 3) = 0 runs per end, so the mean)
    assert "| coma_dmac | 3 | 0.810 ± 0.025 | 0.810 [0.80" in table and "| 0.600 ± 0.000 | 0.300 ± 0.000 |" in table
    assert "| COMA | +0.300 [" in table and "+DMAC better" in table
    # every COMA+DMAC seed (0.80-0.82) above every COMA seed (0.50-0.52): probability of improvement 1
    assert "| 1.00 [1.00, 1.00] | +DMAC better |" in table
    exported = json.loads((out / "marl_eval.json").read_text())
    run = exported["stochastic_game"]["default"]["coma_dmac"]["run_2"]
    assert [run[f"step_{i}"]["step_count"] for i in range(3)] == [0, 5000, 10000]
    assert run["step_2"]["return_ratio"] == pytest.approx([0.82]) and run["absolute_metrics"]["return_ratio"] == pytest.approx([0.82])
    assert not any("_greedy" in metric or "_sampled" in metric for metric in run["step_2"])  # logged one way only
    # omega 1: final ratio 0.9 + 0.01 * seed; cover rate from 0 to 0.5, 0.25 over training
    assert "| 1 | 3 | 0.910 ± 0.025 | 0.250 ± 0.000 |" in table


def test_runs_evaluated_both_ways_export_both_protocols_for_the_paper_table(tmp_path):
    from dmac_lightning.experiments import table

    runs, out = tmp_path / "smax", tmp_path / "out"
    for seed in range(2):  # QMIX published greedy; QMIX+DMAC published sampled
        for label, greedy, sampled, published in (("qmix", 0.8, 0.4, 0.8), ("qmix_dmac", 0.9, 0.6, 0.6)):
            writer = SummaryWriter(os.path.join(runs, label, f"seed_{seed}"))
            for step, fraction in ((0, 0.0), (25_000, 1.0)):
                writer.add_scalar("eval/win_rate", fraction * published + 0.02 * seed, step)
                writer.add_scalar("eval_greedy/win_rate", fraction * greedy + 0.02 * seed, step)
                writer.add_scalar("eval_sampled/win_rate", fraction * sampled + 0.02 * seed, step)
                writer.add_scalar("eval_greedy/return", 20 * fraction * greedy, step)
            writer.close()
    plots.main(["--runs", str(runs), "--out", str(out), "--metric", "eval/win_rate", "--env-name", "smax", "--task-name", "3m"])
    exported = json.loads((out / "marl_eval.json").read_text())
    last = exported["smax"]["3m"]["qmix_dmac"]["run_1"]["step_1"]
    assert last["step_count"] == 25_000 and last["win_rate"] == pytest.approx([0.62])
    assert last["win_rate_greedy"] == pytest.approx([0.92]) and last["win_rate_sampled"] == pytest.approx([0.62])
    assert last["return_greedy"] == pytest.approx([18.0]) and "return" not in last  # only what was logged
    table.main(["--task", f"SMAX 3m={out / 'marl_eval.json'}@0.5", "--out", str(tmp_path / "t"), "--protocol", "greedy"])
    row = next(line for line in (tmp_path / "t" / "paper_table.md").read_text().splitlines() if line.startswith("| QMIX"))
    assert row.startswith("| QMIX | +0.100 [") and "greedy v greedy" in row  # 0.91 - 0.81, not 0.61 - 0.81


def test_the_health_table_flags_overestimation_and_stalls_at_the_time_limit(tmp_path):
    runs, out = tmp_path / "smax", tmp_path / "out"

    def write(label, seed, q_values, eval_lengths):
        writer = SummaryWriter(os.path.join(runs, label, f"seed_{seed}"))
        for step, (q, length) in enumerate(zip(q_values, eval_lengths)):
            writer.add_scalar("critic/q_taken", q, step * 10_000)
            writer.add_scalar("eval/return", q / 2, step * 10_000)
            writer.add_scalar("eval/episode_length", length, step * 10_000)
            writer.add_scalar("train/episode_length", length + 1, step * 10_000)
        writer.close()

    write("qmix", 0, [1.0, 12.0, 10.0], [30, 20, 18])      # healthy: peak 12 <= 20, episodes far from the limit
    write("qmix", 1, [1.0, 25.0, 31.0], [60, 97, 99])      # overestimates, and its last evaluation stalls at 100
    write("dop", 0, [2.0, 4.0, 6.0], [40, 40, 40])
    plots.main(["--runs", str(runs), "--out", str(out), "--metric", "eval/return", "--final-fraction", "0.4",
                "--max-return", "20", "--episode-limit", "100"])
    rows = {(line.split("|")[1].strip(), line.split("|")[2].strip()): [c.strip() for c in line.split("|")[3:-1]]
            for line in (out / "health.md").read_text().splitlines() if line.startswith("| ") and line.split("|")[1].strip() != "run"}
    # final window 0.4 of 20k env steps: the evaluations at 20k only (x >= 12k)
    assert rows[("qmix", "seed_0")] == ["20000", "12.00, 10.00 (critic/q_taken)", "6.00, 5.00", "23.7, 18.0", "-"]
    assert rows[("qmix", "seed_1")][-1] == "critic peak 31.00 > 20; final eval episodes 99.0 steps of 100"
    assert rows[("dop", "seed_0")][-1] == "-" and rows[("dop", "seed_0")][3] == "41.0, 40.0"
    # without the bounds nothing is flagged
    plots.main(["--runs", str(runs), "--out", str(out), "--metric", "eval/return"])
    assert "critic peak" not in (out / "health.md").read_text()


def test_the_final_window_is_a_setting_and_checked(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed in range(2):
        write_run(runs, "coma", seed, 0.5, 0.3)
        write_run(runs, "coma_dmac", seed, 0.8, 0.6)
    # 0.6 of 10k env steps: the evaluations at 5000 and 10000. coma_dmac there: 0.45 and 0.80 (+ 0.01 * seed),
    # so 0.625 and 0.635 a seed, 0.630 over both; coma: 0.30 and 0.50, so 0.400 and 0.410, 0.405
    plots.main(["--runs", str(runs), "--out", str(out), "--final-fraction", "0.6"])
    table = (out / "summary.md").read_text()
    assert "last 60% of a run's env steps" in table
    assert "| coma_dmac | 2 | 0.630 ± " in table and "| coma | 2 | 0.405 ± " in table
    assert "| COMA | +0.225 [" in table
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(SystemExit):
            plots.main(["--runs", str(runs), "--out", str(out), "--final-fraction", bad])


def test_a_fractions_band_is_cut_to_its_range_and_others_are_not():
    mean, ci = np.array([0.1, 0.5, 0.95]), np.array([0.3, 0.2, 0.1])
    low, high = plots.confidence_band("eval/win_rate", mean, ci)
    assert low.tolist() == pytest.approx([0.0, 0.3, 0.85]) and high.tolist() == pytest.approx([0.4, 0.7, 1.0])
    low, high = plots.confidence_band("eval/return", mean, ci)
    assert low.tolist() == pytest.approx([-0.2, 0.3, 0.85]) and high.tolist() == pytest.approx([0.4, 0.7, 1.05])


def test_env_step_ticks_read_as_thousands_and_millions():
    assert [plots.env_steps_label(v) for v in (0, 500, 25_000, 250_000, 1_000_000, 1_500_000)] == ["0", "500", "25k", "250k", "1M", "1.5M"]


def test_mean_ci_uses_student_t():
    mean, half = plots.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-4)


def test_interquartile_mean_and_its_interval_come_from_rliable():
    # 5 runs: a quarter cut at each end is int(1.25) = 1 run: the mean of 2, 3, 4
    point, low, high = plots.iqm_interval(np.array([100.0, 1.0, 3.0, 2.0, 4.0]))
    assert point == pytest.approx(3.0)
    assert 1.0 <= low <= 3.0 <= high <= 100.0
    assert plots.iqm_interval(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0, 2.0)
    assert plots.iqm_interval(np.array([0.7])) == (0.7, 0.7, 0.7)  # one run: no interval
    # 8 runs: 2 cut at each end, the mean of the middle four 3, 4, 5, 6
    assert plots.iqm_interval(np.arange(1.0, 9.0))[0] == pytest.approx(4.5)
    # the interval is a seeded bootstrap's: the same seed repeats it, whatever NumPy's global stream held
    runs = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.6])
    first = plots.iqm_interval(runs, reps=500, seed=1)
    np.random.seed(123)
    assert plots.iqm_interval(runs, reps=500, seed=1) == first
    assert np.random.get_state()[1][0] == np.random.RandomState(123).get_state()[1][0]  # and leaves that stream alone


def test_probability_of_improvement_by_hand_with_ties_counting_half():
    # variant 3, 4, 5 against baseline 1, 2, 3.5: 8 of the 9 pairs favour the variant
    point, low, high = plots.improvement_probability(np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 3.5]), reps=300)
    assert point == pytest.approx(8 / 9)
    assert 0.0 <= low <= point <= high <= 1.0
    # 2, 3 against 2, 1: the tie 2 = 2 counts half, the other three pairs are wins: 3.5 / 4
    assert plots.improvement_probability(np.array([2.0, 3.0]), np.array([2.0, 1.0]), reps=300)[0] == pytest.approx(0.875)
    assert plots.improvement_probability(np.array([1.0, 1.0]), np.array([1.0, 1.0]), reps=300)[0] == 0.5
    # swapping the sides gives the complement
    swapped = plots.improvement_probability(np.array([1.0, 2.0, 3.5]), np.array([3.0, 4.0, 5.0]), reps=300)[0]
    assert swapped == pytest.approx(1 / 9)


def test_performance_profiles_are_the_fractions_of_runs_above_each_threshold():
    profiles, bands = plots.performance_profiles({"a": np.array([0.1, 0.5, 0.9, 0.3])}, np.array([0.0, 0.2, 0.5, 0.95]))
    # above 0: all 4; above 0.2: 0.5, 0.9, 0.3; above 0.5: 0.9 (strictly); above 0.95: none
    np.testing.assert_allclose(profiles["a"], [1.0, 0.75, 0.25, 0.0])
    assert bands["a"].shape == (2, 4) and np.all(bands["a"][0] <= profiles["a"] + 1e-12) and np.all(profiles["a"] <= bands["a"][1] + 1e-12)


def test_welch_difference_interval_and_p_value_by_hand():
    base, other = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 8.0])
    difference, half, p = plots.welch(base, other)
    # variances of the means 1/3 and 4/3; Welch dof = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 2.94
    dof = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    from scipy import stats

    assert difference == pytest.approx(4.0) and half == pytest.approx(stats.t.ppf(0.975, dof) * np.sqrt(5 / 3))
    assert p == pytest.approx(2 * stats.t.sf(4.0 / np.sqrt(5 / 3), dof))


def test_csv_logs_are_read_like_tensorboard_events(tmp_path):
    run = tmp_path / "sw" / "coma" / "seed_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("eval/return_ratio,step,train/cover_rate\n0.1,0,\n,240,0.5\n0.4,5000,\n")
    scalars = plots.read_scalars(str(run))
    assert scalars["eval/return_ratio"][0].tolist() == [0, 5000] and scalars["eval/return_ratio"][1].tolist() == pytest.approx([0.1, 0.4])
    assert scalars["train/cover_rate"][0].tolist() == [240]


def test_one_seed_gets_no_interval_and_no_verdict(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "coma", 0, 0.5, 0.3)
    write_run(runs, "coma_dmac", 0, 0.8, 0.6)
    plots.main(["--runs", str(runs), "--out", str(out)])
    table = (out / "summary.md").read_text()
    assert "| coma_dmac | 1 | 0.800 (one seed: no interval) | n/a |" in table and "± 0.000" not in table
    assert "| COMA | +0.300 (fewer than 2 seeds a side: no test) | n/a | n/a |" in table


def test_the_slurm_launcher_says_how_to_install_submitit_and_translates_resources(monkeypatch, tmp_path, capsys):
    from dmac_lightning.experiments import slurm

    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"needs submitit, which is not installed: pip install 'dmac-lightning\[slurm\]'"):
        sweep.main(["--name", "s", "--algorithms", "coma", "--seeds", "0", "--root", str(tmp_path), "--launcher", "slurm"])
    with pytest.raises(SystemExit):
        sweep.main(["--name", "s", "--algorithms", "coma", "--launcher", "slurm", "--gpus-per-run", "2"])
    assert "--gpus-per-run must be 0 or 1" in capsys.readouterr().err

    assert [slurm.minutes(t) for t in ("90", "1:30:00", "2-00:00", "0:00:20", "4:00:00")] == [90, 90, 2880, 1, 240]
    parameters = slurm.Resources(cpus=8, gpus=1, mem="48G", time="24:00:00", partition="gpu", max_running=20,
                                 sbatch=("account=mygroup", "--exclusive")).parameters("smac_3m", max_requeues=5)
    assert parameters["cpus_per_task"] == 8 and parameters["gpus_per_node"] == 1 and parameters["mem"] == "48G"
    assert parameters["time"] == 1440 and parameters["partition"] == "gpu" and parameters["array_parallelism"] == 20
    assert parameters["additional_parameters"] == {"requeue": True, "account": "mygroup", "exclusive": True}
    assert parameters["signal_delay_s"] == 120  # a long limit: the default warning
    assert slurm.Resources(time="1").parameters("x", 5)["signal_delay_s"] == 15  # a short one: a quarter of it
    # A task of 5 seeds in one process: a run's memory and time, five times over (one buffer each, trained in turn).
    grouped = slurm.Resources(cpus=2, mem="6G", time="4:00:00").parameters("x", 5, seeds=5)
    assert grouped["mem"] == "30G" and grouped["time"] == 1200 and grouped["cpus_per_task"] == 2
    assert [slurm.scaled_memory(m, 3) for m in ("4000", "1.5G", "512M", "2gb")] == ["12000M", "5G", "1536M", "6G"]


def write_export(path, env, task, runs, metric="win_rate"):
    """A marl-eval export: ``runs`` = {algorithm: [[(step, value), ...] per seed]}."""
    tree = {env: {task: {
        name: {f"run_{seed}": {f"step_{i}": {"step_count": step, metric: [value]} for i, (step, value) in enumerate(points)}
               for seed, points in enumerate(seeds)}
        for name, seeds in runs.items()}}}
    path.write_text(json.dumps(tree))
    return str(path)


def test_the_paper_table_from_exports_by_hand(tmp_path):
    from dmac_lightning.experiments import table

    def seeds(*finals):  # two evaluations a seed: 0 at the start, the final value at 100k
        return [[(0, 0.0), (100_000, value)] for value in finals]

    smax = write_export(tmp_path / "a.json", "smax", "3m", {"qmix": seeds(0.5, 0.6, 0.7), "qmix_dmac": seeds(0.6, 0.8, 0.9),
                                                            "coma": seeds(0.2)})
    game = write_export(tmp_path / "b.json", "stochastic_game", "default",
                        {"dop": seeds(0.3, 0.4), "dop_dmac": seeds(0.1, 0.2)}, metric="return_ratio")
    out = tmp_path / "out"
    table.main(["--task", f"SMAX 3m={smax}", "--task", f"game={game}@0.5", "--out", str(out)])
    text = (out / "paper_table.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines() if line.startswith("| ")}
    assert list(rows["family"]) == ["SMAX 3m", "game"]
    qmix, dop = rows["QMIX"], rows["DOP"]
    # QMIX+DMAC minus QMIX: 0.7667 - 0.6 = +0.167; pairs: 0.6 beats 0.5 and ties 0.6 (half), 0.8 and 0.9 beat all three: 7.5 of 9
    assert qmix[0].startswith("+0.167 [") and "P(+DMAC > base) 0.83 [" in qmix[0]
    assert "3 v 3 seeds, 100k, greedy v sampled" in qmix[0] and qmix[1] == "-"
    # the game's last half of each run is its final evaluation: DOP+DMAC 0.15 against DOP 0.35, every pair lost
    assert dop[1].startswith("-0.200 [") and "P(+DMAC > base) 0.00 [" in dop[1] and "sampled v sampled" in dop[1]
    assert "COMA" not in rows  # no +DMAC variant of it in any export
    with open(out / "paper_table.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        table.main(["--task", f"game={game}@1.5", "--out", str(out)])
    with pytest.raises(SystemExit):
        table.main(["--task", "no-equals-sign", "--out", str(out)])


def test_the_paper_table_compares_both_sides_at_one_protocol_when_asked(tmp_path, capsys):
    """QMIX is published greedy and QMIX+DMAC sampled; runs that evaluated both ways give the cell at one protocol."""
    from dmac_lightning.experiments import table

    def seeds(**finals):  # per seed, the final evaluation of each metric (a first one at 0 with zeros)
        count = len(next(iter(finals.values())))
        return {f"run_{seed}": {"step_0": {"step_count": 0, **{m: [0.0] for m in finals}},
                                "step_1": {"step_count": 300_000, **{m: [v[seed]] for m, v in finals.items()}}}
                for seed in range(count)}

    # QMIX: greedy is its published protocol, so win_rate == win_rate_greedy; its sampled play loses more.
    # QMIX+DMAC: sampled is its published protocol; greedy it wins more.
    export = {"smax": {"3m": {
        "qmix": seeds(win_rate=[0.8, 0.9], win_rate_greedy=[0.8, 0.9], win_rate_sampled=[0.5, 0.6]),
        "qmix_dmac": seeds(win_rate=[0.6, 0.7], win_rate_greedy=[0.85, 0.95], win_rate_sampled=[0.6, 0.7]),
    }}}
    both = tmp_path / "both.json"
    both.write_text(json.dumps(export))
    out = tmp_path / "out"

    def qmix_cell(protocol):
        table.main(["--task", f"SMAX 3m={both}@0.5", "--out", str(out), "--protocol", protocol])
        text = (out / "paper_table.md").read_text()
        return next(line for line in text.splitlines() if line.startswith("| QMIX")), text

    published, text = qmix_cell("published")
    assert published.startswith("| QMIX | -0.200 [") and "greedy v sampled" in published and "as published" in text
    greedy, text = qmix_cell("greedy")  # 0.90 - 0.85
    assert greedy.startswith("| QMIX | +0.050 [") and "greedy v greedy" in greedy and "both sides greedy" in text
    sampled, _ = qmix_cell("sampled")  # 0.65 - 0.55
    assert sampled.startswith("| QMIX | +0.100 [") and "sampled v sampled" in sampled
    assert "P(+DMAC > base) 0.88 [" in sampled  # pairs: 0.6 v 0.5 win, 0.6 v 0.6 tie, 0.7 v both win: 3.5 of 4

    old = write_export(tmp_path / "old.json", "smax", "3m", {"qmix": [[(0, 0.0), (100_000, 0.8)]] * 2,
                                                              "qmix_dmac": [[(0, 0.0), (100_000, 0.7)]] * 2})
    with pytest.raises(SystemExit):
        table.main(["--task", f"SMAX 3m={old}", "--out", str(out), "--protocol", "greedy"])
    assert "qmix run_0 has no win_rate_greedy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--task", f"SMAX 3m={both}", "--out", str(out), "--protocol", "argmax"])
    assert "invalid choice: 'argmax' (choose from 'published', 'greedy', 'sampled')" in capsys.readouterr().err


def test_a_rerun_supersedes_a_family_of_a_task_only_when_the_table_is_told_so(tmp_path, capsys):
    from dmac_lightning.experiments import table

    def seeds(*finals):
        return [[(0, 0.0), (60_000, value)] for value in finals]

    old = write_export(tmp_path / "old.json", "stochastic_game", "default",
                       {"coma": seeds(0.2, 0.3), "coma_dmac": seeds(0.6, 0.7), "fop": seeds(0.8, 0.8), "fop_dmac": seeds(0.7, 0.7)},
                       metric="return_ratio")
    rerun = write_export(tmp_path / "rerun.json", "stochastic_game", "default",
                         {"fop": seeds(0.5, 0.6), "fop_dmac": seeds(0.9, 0.9)}, metric="return_ratio")
    out = tmp_path / "out"
    with pytest.raises(SystemExit):  # FOP in both exports of one task, and nothing says which
        table.main(["--task", f"game={old}", "--task", f"game={rerun}", "--out", str(out)])
    assert "FOP is in two exports" in capsys.readouterr().err
    table.main(["--task", f"game={old}#coma, maac", "--task", f"game={rerun}@0.5", "--out", str(out)])
    rows = {line.split("|")[1].strip(): line for line in (out / "paper_table.md").read_text().splitlines() if line.startswith("| ")}
    assert "+0.400 [" in rows["COMA"]  # 0.65 - 0.25, from the old export
    assert "+0.350 [" in rows["FOP"] and "P(+DMAC > base) 1.00" in rows["FOP"]  # 0.9 - 0.55, from the rerun alone
    with pytest.raises(SystemExit):
        table.main(["--task", f"game={old}#coma,sac", "--out", str(out)])
    assert "unknown families ['sac']; the families are coma, maac, qmix, dop, fop" in capsys.readouterr().err


def test_seeds_of_a_run_are_grouped_into_processes():
    planned = sweep.plan(["a/coma.yaml", "a/qmix.yaml"], [0, 1, 2, 3, 4])
    assert [[(r.label, r.seed) for r in group] for group in runs.groups(planned)] == [
        [("coma", s) for s in range(5)], [("qmix", s) for s in range(5)],
    ]
    assert [[r.seed for r in group] for group in runs.groups(planned, 2)] == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4]]
    assert all(len(group) == 1 for group in runs.groups(planned, 1))
    varied = sweep.plan(["a/coma.yaml"], [0, 1], vary="model.init_args.omega=0.1,10")
    assert [[(r.label, r.seed) for r in group] for group in runs.groups(varied)] == [
        [("coma-omega0.1", 0), ("coma-omega0.1", 1)], [("coma-omega10", 0), ("coma-omega10", 1)],
    ]
    with pytest.raises(ValueError, match="--seeds-per-process must be at least 1"):
        runs.groups(planned, 0)
    group = runs.groups(planned)[0][:3]
    argv = sweep.command(group, "/r", "sw", ["--data.max_env_steps", "10"])
    assert argv[argv.index("--seeds") + 1] == "0,1,2" and "--seed_everything" not in argv
    assert argv[argv.index("--trainer.logger.init_args.version") + 1] == "seed_{seed}" and "--ckpt_path" not in argv


def test_a_sweep_trains_a_runs_seeds_in_one_process_each_seed_in_its_own_folder(tmp_path):
    """End to end: two seeds in one process; one seed's failure (injected) marks only it failed; the next sweep
    skips the finished seed and resumes the failed one alone, from its checkpoint."""
    import subprocess

    from conftest import SMALL_GAME

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    tiny = ["--data.env_kwargs", json.dumps(SMALL_GAME), "--data.env_steps_per_epoch", "100", "--evaluation.interval", "200",
            "--evaluation.episodes", "2", "--data.max_env_steps", "200"]
    fail_seed_1 = ["--trainer.callbacks+", json.dumps({"class_path": "run_probes.FailForSeed", "init_args": {"seed": 1, "env_steps": 100}})]
    command = [sys.executable, "-m", "dmac_lightning.experiments.sweep", "--name", "g", "--algorithms", "coma", "--seeds", "0", "1",
               "--root", str(tmp_path), "--threads", "1", "--"]
    first = subprocess.run(command + tiny + fail_seed_1, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "coma seed 0: done" in first.stdout and "coma seed 1: FAILED (exit 1" in first.stdout
    seed_0, seed_1 = (tmp_path / "g" / "coma" / f"seed_{s}" for s in (0, 1))
    assert json.load(open(seed_0 / sweep.DONE))["seeds_in_process"] == 2
    assert not (seed_1 / sweep.DONE).exists() and json.load(open(seed_1 / sweep.FAILED))["exit"] == 1
    assert os.path.realpath(seed_0 / "sweep.log") == os.path.realpath(seed_1 / "sweep.log")  # one process, one log
    log = open(seed_0 / "sweep.log").read()
    assert "training seeds 0, 1 in lockstep" in log and "injected failure for seed 1" in log
    assert (seed_1 / "checkpoints" / "on_exception.ckpt").exists() or (seed_1 / "checkpoints" / "last.ckpt").exists()

    second = subprocess.run(command + tiny, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "coma seed 0: skipped (done before)" in second.stdout and "coma seed 1: done" in second.stdout
    assert "Restored all states from the checkpoint" in open(seed_1 / "sweep.log").read()
    assert not (seed_1 / sweep.FAILED).exists() and (seed_1 / sweep.DONE).exists()


@pytest.mark.parametrize("how", ["sigterm to the sweep", "ctrl-c in the terminal", "sigterm to a sweep of a seed group"])
def test_a_stopped_sweep_stops_its_trainings_with_their_checkpoints_and_starts_no_more(tmp_path, how):
    """``kill`` (SIGTERM to the sweep alone) reaches the training it started, Ctrl-C (SIGINT to the terminal's
    whole process group) stops the sweep too: the run in progress writes its checkpoint, is marked stopped
    (not failed), the next run never starts, and the same command resumes the stopped one. In a seed group, a
    seed that failed before the stop stays failed."""
    import signal
    import subprocess
    import time

    from conftest import SMALL_GAME

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    game = ["--data.env_kwargs", json.dumps(SMALL_GAME), "--evaluation.interval", "100", "--evaluation.episodes", "2"]
    grouped = how == "sigterm to a sweep of a seed group"
    command = [sys.executable, "-m", "dmac_lightning.experiments.sweep", "--name", "s", "--algorithms", "coma", "--seeds", "0", "1",
               "--seeds-per-process", "2" if grouped else "1", "--root", str(tmp_path), "--threads", "1", "--"]
    fail_seed_1 = ["--trainer.callbacks+", json.dumps({"class_path": "run_probes.FailForSeed", "init_args": {"seed": 1, "env_steps": 100}})]
    seed_0, seed_1 = (tmp_path / "s" / "coma" / f"seed_{s}" for s in (0, 1))
    sweep_process = subprocess.Popen(command + game + ["--data.max_env_steps", "10000000"] + (fail_seed_1 if grouped else []), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (seed_0 / "sweep.log").exists() or "eval @ 200" not in (seed_0 / "sweep.log").read_text():
            assert sweep_process.poll() is None and time.monotonic() < deadline, "the training never got going"
            time.sleep(0.5)
        training = json.load(open(seed_0 / sweep.CLAIM))["child"]
        if how == "ctrl-c in the terminal":
            os.killpg(sweep_process.pid, signal.SIGINT)
        else:
            sweep_process.send_signal(signal.SIGTERM)
        output, _ = sweep_process.communicate(timeout=120)
    finally:
        if sweep_process.poll() is None:
            os.killpg(sweep_process.pid, signal.SIGKILL)
    assert sweep_process.returncode == (130 if how == "ctrl-c in the terminal" else 143), output
    assert not runs.process_running(training), "the training outlived its sweep"
    assert "coma seed 0: stopped (checkpoint written" in output, output
    assert (seed_0 / "checkpoints" / "on_exception.ckpt").exists()
    assert not (seed_0 / sweep.FAILED).exists() and not (seed_0 / sweep.DONE).exists() and not (seed_0 / sweep.CLAIM).exists()
    if grouped:  # seed 1 failed before the stop: it stays failed
        assert "coma seed 1: FAILED (exit 1" in output and json.load(open(seed_1 / sweep.FAILED))["exit"] == 1
    else:
        assert "coma seed 1: not started" in output and not (seed_1 / "sweep.log").exists()
    from dmac_lightning.experiments.slurm import status

    assert {(label, seed): state for label, seed, state, _ in status(str(tmp_path), "s")}[("coma", 0)] == "stopped"

    again = subprocess.run(command + game + ["--data.max_env_steps", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Restored all states from the checkpoint" in (seed_0 / "sweep.log").read_text()
    assert (seed_0 / sweep.DONE).exists() and (seed_1 / sweep.DONE).exists()
