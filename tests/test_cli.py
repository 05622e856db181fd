"""End to end through the real CLI: TensorBoard events, checkpoints, resume, config errors."""

import glob
import json
import os
import re
import signal
import subprocess

import pytest
import torch
from tensordict import TensorDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_GAME, config_args, dmac_command
from dmac_lightning.cli import main

COMA_DMAC = config_args("coma_dmac")  # --config ... on the paper's stochastic game
TESTS = os.path.dirname(os.path.abspath(__file__))
FAST = [
    "--data.env_kwargs", json.dumps(SMALL_GAME),
    "--data.batch_size", "8",
    "--data.env_steps_per_epoch", "200",
    "--evaluation.interval", "400",
    "--evaluation.episodes", "4",
    "--trainer.enable_progress_bar", "false",
]
REQUIRED_TAGS = {
    "train/episode_return", "train/env_steps_per_s", "train/cover_rate", "loss/critic", "loss/actor",
    "dmac/kl_pi_rho", "eval/return", "eval/return_ratio",
}


def run(cwd, *args, expect_ok=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}  # run_probes
    result = subprocess.run(dmac_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def scalars(run_dir):
    tags: dict[str, list[int]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.step for e in events.Scalars(tag))
    return tags


def test_fit_writes_tensorboard_and_checkpoint_then_resume_continues(tmp_path, monkeypatch, capsys):
    run(tmp_path, "fit", *COMA_DMAC, *FAST, "--data.max_env_steps", "800")
    run_dir = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and (run_dir / "config.yaml").exists()
    first = torch.load(checkpoint, weights_only=True)
    steps_first = first["EpisodeDataModule"]["env_steps"]
    assert first["epoch"] >= 3  # a checkpoint after every epoch, not just the first
    assert 800 <= steps_first < 800 + 4 * 5 * 2  # stops within one collect of the budget
    # rho is a separate network that has moved away from its initial copy of pi but not onto pi
    state = first["state_dict"]
    assert not torch.equal(state["actor.head.weight"], state["target_actor.head.weight"])

    tags = scalars(run_dir)
    assert REQUIRED_TAGS <= set(tags), REQUIRED_TAGS - set(tags)
    assert max(tags["train/episode_return"]) == steps_first  # x-axis: env steps, not updates
    assert 0 in tags["eval/return"]

    run(tmp_path, "fit", *COMA_DMAC, *FAST, "--data.max_env_steps", "1600", "--ckpt_path", "last")
    second = torch.load(checkpoint, weights_only=True)
    assert second["EpisodeDataModule"]["env_steps"] >= 1600
    assert second["EpisodeDataModule"]["episodes"] > first["EpisodeDataModule"]["episodes"]
    resumed = scalars(run_dir)  # the resumed run writes into the same directory ...
    assert min(s for s in resumed["train/episode_return"] if s not in tags["train/episode_return"]) > steps_first
    assert not (tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_1").exists()

    # `dmac test` evaluates the newest checkpoint of the run
    monkeypatch.chdir(tmp_path)
    main(["test", *COMA_DMAC, *FAST, "--ckpt_path", "last", "--evaluation.episodes", "6"])
    printed = capsys.readouterr().out
    assert "test/return" in printed and "test/return_ratio" in printed


def probe(name: str, **init_args) -> list[str]:
    return ["--trainer.callbacks+", json.dumps({"class_path": f"run_probes.{name}", "init_args": init_args})]


def test_a_crash_keeps_checkpoint_and_events_and_resume_restores_everything(tmp_path):
    crashed = run(tmp_path, "fit", *COMA_DMAC, *FAST, "--data.max_env_steps", "1600",
                  *probe("FailAt", env_steps=700), expect_ok=False)
    assert crashed.returncode != 0 and "injected failure" in crashed.stderr
    run_dir = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0"
    on_exception = torch.load(run_dir / "checkpoints" / "on_exception.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    crash_steps = on_exception["EpisodeDataModule"]["env_steps"]
    assert crash_steps >= 700 > last["EpisodeDataModule"]["env_steps"] >= 600  # newer than the last epoch's
    tags = scalars(run_dir)  # the events written before the crash are readable
    assert max(tags["train/episode_return"]) >= 600 and "loss/critic" in tags

    dump = tmp_path / "resumed_start.pt"
    run(tmp_path, "fit", *COMA_DMAC, *FAST, "--data.max_env_steps", "1600", "--ckpt_path", "last",
        *probe("DumpAtTrainStart", path=str(dump)))
    start = torch.load(dump, weights_only=True)
    # the resumed run starts exactly where the crash left off: pi, rho, critic, target critic, optimisers, counter
    assert start["env_steps"] == crash_steps
    assert start["state_dict"].keys() == on_exception["state_dict"].keys()
    assert any(name.startswith("target_critic.") for name in start["state_dict"])
    for name, value in on_exception["state_dict"].items():
        assert torch.equal(start["state_dict"][name], value.cpu()), name
    for restored, saved in zip(start["optimizer_states"], on_exception["optimizer_states"], strict=True):
        for key, buffers in saved["state"].items():
            assert torch.equal(restored["state"][key]["square_avg"], buffers["square_avg"]), key
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["EpisodeDataModule"]["env_steps"] >= 1600


def test_python_dash_m_and_the_console_script_are_the_same_cli(tmp_path):
    result = run(tmp_path, "fit", "--help")
    assert "--data.max_env_steps" in result.stdout and "--model.help" in result.stdout
    assert "--evaluation.interval" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.init_args.omega", "-1"], r"model.omega must be in \[0.0, inf\]"),
        (["--model.init_args.tau", "0"], r"model.tau must be in \(0.0, 1.0\]"),
        (["--model.init_args.tau", "1.5"], r"model.tau must be in \(0.0, 1.0\]"),
        (["--model.init_args.td_lambda", "1.2"], r"model.td_lambda must be in \[0.0, 1.0\]"),
        (["--data.batch_size", "6000"], r"batch_size \(6000\) is larger than the replay buffer"),
        (["--data.env", "starcraft"], r"unknown env 'starcraft'; allowed values: .*stochastic_game"),
        (["--data.env_kwargs", '{"n_agents": 0}'], r"n_agents must be an integer >= 1"),
        (["--model", "Qlearning"], r"model: unknown algorithm 'Qlearning'; allowed values: .*ComaDmac"),
        (["--ckpt_path", "last"], r"no run of stochastic_game/ComaDmac has a last.ckpt"),
        (["--model.init_args.lr_actor", "nan"], r"model.lr_actor must be a float, got 'nan'"),
        (["--model.init_args.omega", "abc"], r"model.omega must be a float, got 'abc'"),
        (["--model.init_args.omegaa", "0.1"], r"model.omegaa: not a setting of ComaDmac; allowed: omega, tau, .*lr_actor"),
        (["--model.class_path", "my.Algorithm"], r"model: unknown algorithm 'my.Algorithm'; allowed values: Coma, ComaDmac"),
        (["--model.init_args.target_critic_copy_every", "0"], r"model.target_critic_copy_every must be an integer >= 1, got 0"),
    ],
)
def test_bad_config_fails_before_training_naming_the_field(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *COMA_DMAC, *args])
    assert exit_info.value.code == 2
    first_line = capsys.readouterr().err.splitlines()[0]  # the cause first, no usage dump before it
    assert first_line.startswith("error: ") and re.search(message, first_line), first_line
    assert not glob.glob(str(tmp_path / "lightning_logs" / "**" / "*.ckpt"), recursive=True)


def test_a_config_error_exits_with_status_2_from_the_console(tmp_path):
    result = run(tmp_path, "fit", *COMA_DMAC, "--model.init_args.omega", "-0.5", expect_ok=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "error: model.omega must be in [0.0, inf], got -0.5"


def test_default_root_dir_places_the_runs_and_an_explicit_save_dir_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    short = [*COMA_DMAC, *FAST, "--data.max_env_steps", "200", "--data.warmup_episodes", "0"]
    main(["fit", *short, "--trainer.default_root_dir", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "lightning_logs").exists()
    main(["fit", *short, "--trainer.default_root_dir", str(tmp_path / "elsewhere"), "--trainer.logger.init_args.save_dir", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "stochastic_game" / "ComaDmac" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_a_csv_logger_gets_the_same_tags_as_tensorboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    short = [*COMA_DMAC, *FAST, "--data.max_env_steps", "400", "--data.warmup_episodes", "0", "--trainer.log_every_n_steps", "1"]
    main(["fit", *short])
    main(["fit", *short, "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "csv_logs", "--trainer.logger.name", "auto"])
    with open(tmp_path / "csv_logs" / "stochastic_game" / "ComaDmac" / "version_0" / "metrics.csv") as f:
        csv_tags = set(f.readline().strip().split(",")) - {"step", "epoch"}
    assert REQUIRED_TAGS <= csv_tags
    assert csv_tags == set(scalars(str(tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0")))


def test_a_wandb_logger_in_offline_mode_gets_the_same_tags(tmp_path, monkeypatch):
    from dmac_lightning.cli import DMACCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = DMACCLI(args=[*COMA_DMAC, *FAST, "--data.max_env_steps", "400", "--data.warmup_episodes", "0",
                        "--trainer.log_every_n_steps", "1", "--trainer.logger", "WandbLogger",
                        "--trainer.logger.offline", "true", "--trainer.logger.save_dir", "wandb_logs"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    run = cli.trainer.logger.experiment
    try:
        logged = {key for key in run.summary.keys() if not key.startswith("_")}
        assert REQUIRED_TAGS <= logged, REQUIRED_TAGS - logged
        assert run.summary["trainer/global_step"] == cli.datamodule.env_steps  # wandb's x-axis: env steps
        assert run.config["omega"] == pytest.approx(0.2) and run.config["env"] == "stochastic_game"
        assert glob.glob(str(tmp_path / "wandb_logs" / "wandb" / "offline-run-*" / "run-*.wandb"))
    finally:
        run.finish()


def test_every_epoch_is_checkpointed_by_env_steps_even_before_the_first_update(tmp_path, monkeypatch):
    # the warm-up collects but steps no optimizer: its epochs are saved all the same, named by env steps
    monkeypatch.chdir(tmp_path)
    main(["fit", *COMA_DMAC, *FAST, "--data.max_env_steps", "400", "--data.warmup_episodes", "500"])
    directory = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / "checkpoints"
    saved = torch.load(directory / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 0 and saved["EpisodeDataModule"]["env_steps"] == 400
    # beside them the best evaluated policy (evaluations at 0 and 400 env steps)
    assert sorted(os.listdir(directory)) == ["best.ckpt", "epoch=1-env_steps=400.ckpt", "last.ckpt"]


def test_the_progress_bar_counts_env_steps_against_the_budget(tmp_path):
    result = run(tmp_path, "fit", *COMA_DMAC, *FAST[:-2], "--data.max_env_steps", "400", "--data.warmup_episodes", "0")
    bar = result.stdout.replace("\r", "\n")
    assert re.search(r"env steps: 100%.*\b400/400 \[.* steps/s, return=.*eval_return_ratio=", bar), bar[-2000:]
    assert "Epoch" not in bar and "/?" not in bar  # no unknown total


def test_a_killed_run_resumes_with_the_checkpointed_replay_buffer_and_counters(tmp_path):
    # kill -9 mid-run (no exception handler runs), then --ckpt_path last: the off-policy buffer is back
    args = [*COMA_DMAC, *FAST, "--data.warmup_episodes", "0"]
    # killed from inside at 700 env steps: after the third epoch's checkpoint (600), never during a save
    killed = run(tmp_path, "fit", *args, "--data.max_env_steps", "100000", *probe("KillAt", env_steps=700), expect_ok=False)
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["EpisodeDataModule"]
    assert 600 <= saved["env_steps"] < 700 and len(saved["buffer"]["newest"]) > 0

    dump = tmp_path / "resumed.pt"
    run(tmp_path, "fit", *args, "--data.max_env_steps", str(saved["env_steps"] + 200), "--ckpt_path", "last",
        *probe("DumpAtTrainStart", path=str(dump)))
    start = torch.load(dump, weights_only=True)
    assert (start["env_steps"], start["episodes"]) == (saved["env_steps"], saved["episodes"])
    assert tuple(start["update_credit"]) == tuple(saved["update_credit"])
    stored = TensorDict().load_state_dict(saved["buffer"]["episodes"], strict=False).exclude("index")
    resumed = TensorDict(start["buffer"], batch_size=stored.batch_size)
    assert stored.batch_size[0] == resumed.batch_size[0] > 0
    for key in stored.keys(include_nested=True, leaves_only=True):
        assert torch.equal(stored[key], resumed[key]), key
    assert torch.equal(start["newest"], saved["buffer"]["newest"])
    final = torch.load(last, weights_only=True)["EpisodeDataModule"]
    assert final["env_steps"] >= saved["env_steps"] + 200  # and training went on from there


def test_a_run_stopped_by_sigterm_keeps_its_checkpoint_and_exits_143(tmp_path):
    # as SLURM stops a job: the run writes on_exception.ckpt and exits non-zero (Lightning alone exits 0,
    # and a sweep would take the stopped run for a finished one)
    args = [*COMA_DMAC, *FAST, "--data.warmup_episodes", "0", "--data.max_env_steps", "100000"]
    stopped = run(tmp_path, "fit", *args, *probe("KillAt", env_steps=300, signal_name="SIGTERM"), expect_ok=False)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    saved = torch.load(tmp_path / "lightning_logs" / "stochastic_game" / "ComaDmac" / "version_0" / "checkpoints" / "on_exception.ckpt",
                       weights_only=True)
    assert 300 <= saved["EpisodeDataModule"]["env_steps"] < 100_000
