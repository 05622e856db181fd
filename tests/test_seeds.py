"""``dmac fit --seeds N``: several seeds of one config in one process, each the run ``--seed_everything s`` alone makes.

Each seed's weights, optimiser states and logged losses after a few collects and updates are compared with
separate runs of the same seeds, for every algorithm on the stochastic game (float64, the regression guard's
dtype) and on SMAX 3m (float32: JaxMARL hands its observations over as float32). Lockstep runs each seed's
own operations in its own order, so any difference is state leaking from one seed to another (a random
stream, a seed variable, grad mode), which these comparisons catch at the first draw it changes.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_GAME, config_args
from dmac_lightning.algorithms import NAMES
from dmac_lightning.cli import SEED_RESULT, main, split_seeds_option
from dmac_lightning.experiments import plots

TOLERANCE = 1e-9
GAME = [
    "--data.env_kwargs", json.dumps(SMALL_GAME),
    "--data.n_envs", "4", "--data.episodes_per_collect", "4", "--data.batch_size", "4", "--data.warmup_episodes", "0",
    "--data.updates_per_episode", "0.5", "--data.env_steps_per_epoch", "40", "--data.max_env_steps", "80",
    "--evaluation.interval", "40", "--evaluation.episodes", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
]
SMAX = [
    "--data.env_kwargs", json.dumps({"map_name": "3m", "max_steps": 20}),
    "--data.n_envs", "2", "--data.episodes_per_collect", "2", "--data.batch_size", "2", "--data.warmup_episodes", "0",
    "--data.recent_episodes", "0", "--data.recent_window", "2",
    "--data.updates_per_episode", "1", "--data.env_steps_per_epoch", "60", "--data.max_env_steps", "100",
    "--evaluation.interval", "60", "--evaluation.episodes", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
]
LOSSES = ("loss/critic", "loss/actor", "loss/q")


def fit(*args: str) -> int:
    try:
        main(["fit", *args])
    except SystemExit as end:
        return int(end.code or 0)
    return 0


def outputs(run_dir: str, newest_leg: bool = False) -> dict:
    """What a run leaves that must equal across ways of running it: final weights, optimiser states, losses."""
    checkpoint = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True, map_location="cpu")
    losses: dict[str, list[float]] = {}
    legs = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")), key=os.path.getmtime)  # a resumed run's, in order
    for events_file in legs[-1:] if newest_leg else legs:
        events = EventAccumulator(events_file)
        events.Reload()
        for tag in LOSSES:
            if tag in events.Tags()["scalars"]:
                losses.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
    return {
        "weights": checkpoint["state_dict"],
        "optimizers": [
            tensor for state in checkpoint["optimizer_states"] for slot in state["state"].values() for tensor in slot.values()
            if torch.is_tensor(tensor) and tensor.is_floating_point()
        ],
        "env_steps": checkpoint["EpisodeDataModule"]["env_steps"],
        "losses": losses,
    }


def assert_same(actual: dict, expected: dict, what: str) -> None:
    assert actual["env_steps"] == expected["env_steps"], what
    assert actual["weights"].keys() == expected["weights"].keys(), what
    for key, value in expected["weights"].items():
        if value.is_floating_point():
            assert torch.allclose(actual["weights"][key], value, rtol=0, atol=TOLERANCE), f"{what}: weights {key}"
    assert len(actual["optimizers"]) == len(expected["optimizers"]) > 0, what
    for got, want in zip(actual["optimizers"], expected["optimizers"]):
        assert torch.allclose(got, want, rtol=0, atol=TOLERANCE), f"{what}: optimiser state"
    assert actual["losses"].keys() == expected["losses"].keys() and actual["losses"], what
    for tag, values in expected["losses"].items():
        assert len(actual["losses"][tag]) == len(values) > 0, f"{what}: {tag}"
        # TensorBoard keeps scalars in float32: 1e-6 is float32 rounding of equal losses, not a looser test
        assert max(abs(a - b) for a, b in zip(actual["losses"][tag], values)) <= TOLERANCE * 1e3, f"{what}: {tag}"


def compare_with_separate_runs(tmp_path, algorithm: str, env_args: list[str], dtype: torch.dtype, seeds=(3, 4)) -> None:
    group = str(tmp_path / "group")
    assert fit(*env_args, "--trainer.logger.init_args.save_dir", group, "--seed_everything", str(seeds[0]), "--seeds", str(len(seeds))) == 0
    group_dirs = sorted(glob.glob(os.path.join(group, "*", "*", "version_0", "seed_*")))
    assert [os.path.basename(d) for d in group_dirs] == [f"seed_{s}" for s in seeds]
    for seed, group_dir in zip(seeds, group_dirs):
        assert json.load(open(os.path.join(group_dir, SEED_RESULT)))["exit"] == 0
        separate = str(tmp_path / f"separate_{seed}")
        assert fit(*env_args, "--trainer.logger.init_args.save_dir", separate, "--seed_everything", str(seed)) == 0
        (separate_dir,) = glob.glob(os.path.join(separate, "*", "*", "version_0"))
        assert_same(outputs(group_dir), outputs(separate_dir), f"{algorithm} seed {seed}")
    weights = outputs(group_dirs[0])["weights"].values()
    assert {w.dtype for w in weights if w.is_floating_point()} == {dtype}  # the dtype the comparison claims
    # dmac-plots reads the group as one run of len(seeds) seeds (``<Algorithm>/version_0/seed_<s>``).
    (algorithm_dir,) = {os.path.dirname(os.path.dirname(d)) for d in group_dirs}
    assert {label: len(run.seeds) for label, run in plots.load(algorithm_dir).items()} == {"version_0": len(seeds)}
    # Different seeds really differ: the comparison above could not pass by every seed being the same run.
    first, second = (outputs(d) for d in group_dirs)
    assert any(not torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"] if first["weights"][k].is_floating_point())


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("algorithm", NAMES)
def test_each_seed_equals_its_separate_run_on_the_stochastic_game(algorithm, tmp_path, float64):
    compare_with_separate_runs(tmp_path, algorithm, [*config_args(algorithm), *GAME], torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", NAMES)
def test_each_seed_equals_its_separate_run_on_smax_3m(algorithm, tmp_path):
    pytest.importorskip("jaxmarl")
    compare_with_separate_runs(tmp_path, algorithm, [*config_args(algorithm, "smax", "3m"), *SMAX], torch.float32)


def test_resuming_several_seeds_continues_each_as_its_separate_resume(tmp_path, float64):
    """A group stopped at its budget and resumed with ``--ckpt_path last`` (to a larger one) continues every seed
    exactly as that seed's checkpoint resumed alone does, in the same run folder."""
    common = [*config_args("dop_dmac"), *GAME]
    group = str(tmp_path / "group")
    assert fit(*common, "--seeds", "2", "--trainer.logger.init_args.save_dir", group, "--data.max_env_steps", "40") == 0
    checkpoints = {}
    for seed in (0, 1):
        (path,) = glob.glob(os.path.join(group, "*", "*", "version_0", f"seed_{seed}", "checkpoints", "last.ckpt"))
        checkpoints[seed] = shutil.copy(os.path.realpath(path), tmp_path / f"seed_{seed}.ckpt")
        assert torch.load(path, weights_only=True)["EpisodeDataModule"]["env_steps"] == 40
    assert fit(*common, "--seeds", "2", "--trainer.logger.init_args.save_dir", group, "--ckpt_path", "last") == 0
    assert not glob.glob(os.path.join(group, "*", "*", "version_1")), "resume continues in the same run folder"
    for seed in (0, 1):
        alone = str(tmp_path / f"alone_{seed}")
        assert fit(*common, "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", alone, "--ckpt_path", str(checkpoints[seed])) == 0
        (resumed,) = glob.glob(os.path.join(group, "*", "*", "version_0", f"seed_{seed}"))
        (separate,) = glob.glob(os.path.join(alone, "*", "*", "version_0"))
        got, want = outputs(resumed, newest_leg=True), outputs(separate)
        assert want["env_steps"] == 80
        assert_same(got, want, f"resumed seed {seed}")


def test_one_seed_diverging_stops_alone_and_says_so(tmp_path, capsys):
    """A learning rate of 1e30 makes every seed diverge, at its own update; each stops with the one message,
    the group reports each, and the exit status is 1."""
    root = str(tmp_path)
    status = fit(
        *config_args("qmix"), *GAME, "--seeds", "2", "--trainer.logger.init_args.save_dir", root,
        "--model.init_args.lr_critic", "1e30", "--data.max_env_steps", "400", "--data.env_steps_per_epoch", "200",
    )
    err = capsys.readouterr().err
    assert status == 1
    for seed in (0, 1):
        assert f"seed {seed}: diverged:" in err
        (result,) = glob.glob(os.path.join(root, "*", "*", "version_0", f"seed_{seed}", SEED_RESULT))
        assert json.load(open(result))["exit"] == 1
    assert "(the other seeds go on)" in err  # the first to stop said the others continue


def test_a_failing_seed_does_not_stop_the_others(tmp_path, capsys, caplog):
    """One seed's crash (an injected error at a seed-specific point) ends that seed; the other trains to its budget."""
    root = str(tmp_path)
    status = fit(
        *config_args("coma_dmac"), *GAME, "--seeds", "2", "--trainer.logger.init_args.save_dir", root,
        "--trainer.callbacks+", json.dumps({"class_path": "run_probes.FailForSeed", "init_args": {"seed": 1, "env_steps": 40}}),
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "seed 1: failed: RuntimeError: injected failure for seed 1" in err and "seed 0: finished" in err
    assert "seed 0: eval @ 0 env steps" in caplog.text and "seed 1: eval @ 0 env steps" in caplog.text  # whose it is
    (finished,) = glob.glob(os.path.join(root, "*", "*", "version_0", "seed_0", "checkpoints", "last.ckpt"))
    assert torch.load(finished, weights_only=True)["EpisodeDataModule"]["env_steps"] >= 80
    (crashed,) = glob.glob(os.path.join(root, "*", "*", "version_0", "seed_1", "checkpoints", "on_exception.ckpt"))
    assert torch.load(crashed, weights_only=True)["EpisodeDataModule"]["env_steps"] < 80


def test_one_seed_of_a_group_resumes_alone_with_ckpt_path_last(tmp_path):
    root = str(tmp_path)
    common = [*config_args("coma_dmac"), *GAME, "--trainer.logger.init_args.save_dir", root]
    assert fit(*common, "--seeds", "2", "--data.max_env_steps", "40") == 0
    assert fit(*common, "--seed_everything", "1", "--ckpt_path", "last") == 0
    (last,) = glob.glob(os.path.join(root, "*", "*", "version_0", "seed_1", "checkpoints", "last.ckpt"))
    assert torch.load(last, weights_only=True)["EpisodeDataModule"]["env_steps"] >= 80
    (other,) = glob.glob(os.path.join(root, "*", "*", "version_0", "seed_0", "checkpoints", "last.ckpt"))
    assert torch.load(other, weights_only=True)["EpisodeDataModule"]["env_steps"] < 80


def test_seeds_option_parsing_and_errors(tmp_path, capsys):
    assert split_seeds_option(["fit", "--seeds", "1", "--x"]) == (None, ["fit", "--x"])
    assert split_seeds_option(["fit", "--seeds=5"]) == (5, ["fit"])
    assert split_seeds_option(["fit", "--seeds", "0,2,5"]) == ([0, 2, 5], ["fit"])
    for bad in ("0", "two", "1,1"):
        with pytest.raises(SystemExit) as end:
            main(["fit", "--seeds", bad])
        assert end.value.code == 2
        assert "--seeds must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as end:
        main(["test", "--seeds", "2"])
    assert end.value.code == 2 and "--seeds goes with dmac fit" in capsys.readouterr().err
    status = fit(*config_args("coma_dmac"), *GAME, "--seeds", "2", "--ckpt_path", str(tmp_path / "x.ckpt"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert status == 2 and "with --seeds: give --ckpt_path last" in capsys.readouterr().err
    status = fit(*config_args("coma_dmac"), *GAME, "--seeds", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                 "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert status == 2 and "trainer.devices must be 1" in capsys.readouterr().err
    config = tmp_path / "seeds.yaml"
    config.write_text("seeds: '3'\n")
    status = fit(*config_args("coma_dmac"), *GAME, "--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert status == 2 and "give --seeds on the command line" in capsys.readouterr().err


def test_explicit_seed_list_lands_in_given_folders(tmp_path):
    """The sweep's form: a list of seeds and a version with ``{seed}``: each seed in its own named folder."""
    root = str(tmp_path)
    assert fit(
        *config_args("coma_dmac"), *GAME, "--seeds", "2,5", "--trainer.logger.init_args.save_dir", root,
        "--trainer.logger.init_args.name", "coma_dmac", "--trainer.logger.init_args.version", "seed_{seed}",
        "--data.max_env_steps", "40",
    ) == 0
    for seed in (2, 5):
        run_dir = os.path.join(root, "coma_dmac", f"seed_{seed}")
        assert os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt"))
        assert "seed_everything: " + str(seed) in open(os.path.join(run_dir, "config.yaml")).read()


def test_seeds_advance_in_lockstep(tmp_path):
    """Seeds take turns collect by collect: no seed runs ahead of another by more than one collect."""
    import run_probes

    run_probes.COLLECTS.clear()
    assert fit(
        *config_args("coma_dmac"), *GAME, "--seeds", "3", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks+", json.dumps({"class_path": "run_probes.RecordCollects"}),
    ) == 0
    order = run_probes.COLLECTS
    assert {seed for seed, _ in order} == {0, 1, 2}
    newest = {0: 0, 1: 0, 2: 0}
    for seed, steps in order:
        newest[seed] = steps
        assert max(newest.values()) - min(newest.values()) <= 20, order  # one collect: 4 episodes of 5 steps


def test_sigterm_stops_every_seed_with_its_checkpoint_and_resume_finishes_them(tmp_path):
    """What SLURM's pre-emption does to a task of several seeds: every seed writes its crash checkpoint, the
    process exits 143 (not 0: a sweep must not take it for finished), and ``--ckpt_path last`` finishes each."""
    import subprocess

    from conftest import dmac_command

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    common = [*config_args("coma_dmac"), *GAME, "--seeds", "2", "--data.max_env_steps", "400", "--data.env_steps_per_epoch", "100"]
    kill = ["--trainer.callbacks+", json.dumps({"class_path": "run_probes.KillAt", "init_args": {"env_steps": 160, "signal_name": "SIGTERM"}})]
    stopped = subprocess.run(dmac_command("fit", *common, *kill), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    for seed in (0, 1):
        run_dir = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / f"seed_{seed}"
        assert f"seed {seed}: stopped by SIGTERM" in stopped.stderr
        assert json.load(open(run_dir / SEED_RESULT))["exit"] == 143
        assert torch.load(run_dir / "checkpoints" / "on_exception.ckpt", weights_only=True)["EpisodeDataModule"]["env_steps"] < 400
    assert "go on" not in stopped.stderr  # a stop of the group, not of one seed
    resumed = subprocess.run(dmac_command("fit", *common, "--ckpt_path", "last"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for seed in (0, 1):
        run_dir = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / f"seed_{seed}"
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["EpisodeDataModule"]["env_steps"] >= 400
        assert "on_exception.ckpt" in resumed.stderr + resumed.stdout


def test_ctrl_c_stops_every_seed_with_its_checkpoint(tmp_path):
    """Ctrl-C stops the seed it lands in the way Lightning stops a run; the group then stops the others the same
    way (each writes its crash checkpoint), rather than training on."""
    import signal
    import subprocess

    from conftest import dmac_command

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    interrupt = ["--trainer.callbacks+", json.dumps({"class_path": "run_probes.KillAt", "init_args": {"env_steps": 160, "signal_name": "SIGINT"}})]
    stopped = subprocess.run(
        dmac_command("fit", *config_args("coma_dmac"), *GAME, "--seeds", "2", "--data.max_env_steps", "400", *interrupt),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        # A shell starts background jobs with SIGINT ignored, and a child inherits that: give the run a
        # terminal's default, as when it is started in the foreground.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "go on" not in stopped.stderr
    for seed in (0, 1):
        run_dir = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / f"seed_{seed}"
        assert f"seed {seed}: interrupted" in stopped.stderr and json.load(open(run_dir / SEED_RESULT))["exit"] == 130
        assert torch.load(run_dir / "checkpoints" / "on_exception.ckpt", weights_only=True)["EpisodeDataModule"]["env_steps"] < 400
