"""Runs that fail safely: a diverging run stops with one message and only finite checkpoints; the best
evaluated policy is kept in ``best.ckpt``; checkpoints with settings since renamed load or say why not."""

import glob
import json
import os
import subprocess

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_GAME, config_args, dmac_command
from dmac_lightning.checkpoints import RenamedSettingError, upgrade_settings
from dmac_lightning.cli import main

QUICK = [
    "--data.env_kwargs", json.dumps(SMALL_GAME),
    "--data.n_envs", "8", "--data.episodes_per_collect", "8", "--data.batch_size", "8",
    "--data.env_steps_per_epoch", "80", "--evaluation.interval", "80", "--evaluation.episodes", "4",
    "--trainer.enable_progress_bar", "false",
]


def finite_state(path: str) -> bool:
    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize(
    "algorithm",
    [
        "qmix",  # greedy acting: NaN Q-values still pick actions, the flush of the losses stops it
        "coma_dmac",  # sampling: NaN probabilities make collection fail, converted into the same message
    ],
)
def test_a_diverging_run_stops_with_one_message_and_leaves_only_finite_checkpoints(algorithm, tmp_path):
    # The warm-up (10 episodes of 5 steps: nothing is trained before 80 env steps) ends the first epochs
    # with finite checkpoints; the first updates, at a learning rate of 1e30, make the weights infinite.
    result = subprocess.run(
        dmac_command(
            "fit", *config_args(algorithm), *QUICK, "--data.warmup_episodes", "24", "--data.max_env_steps", "2000",
            "--model.init_args.lr_critic", "1e30", "--trainer.log_every_n_steps", "5",
        ),
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    message = errors[0]
    assert "diverged at update" in message and "(env step " in message
    assert "NaN or inf" in message and "model.lr_critic 1e+30" in message
    assert "learning rate too high, omega too large, or rewards on too large a scale" in message
    assert "Traceback" not in result.stderr

    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "stochastic_game" / "*" / "version_0"))
    checkpoints = glob.glob(os.path.join(run_dir, "checkpoints", "*.ckpt"))
    names = {os.path.basename(path) for path in checkpoints}
    assert "last.ckpt" in names and "on_exception.ckpt" not in names
    assert all(finite_state(path) for path in checkpoints), names
    last = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert last["EpisodeDataModule"]["env_steps"] < 2000  # stopped early, not at the budget
    assert os.path.join("checkpoints", "last.ckpt") in message  # the message says what is kept

    events = EventAccumulator(run_dir)
    events.Reload()  # the events up to the failure are readable
    assert [e.step for e in events.Scalars("train/episode_return")][-1] == last["EpisodeDataModule"]["env_steps"] + 40
    if algorithm == "qmix":  # stopped at a flush: the non-finite losses were logged first
        critic = torch.tensor([e.value for e in events.Scalars("loss/critic")])
        assert not critic.isfinite().all()


def test_best_checkpoint_holds_the_best_evaluated_policy_and_dmac_test_reads_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*config_args("coma"), *QUICK, "--data.max_env_steps", "480"]
    main(["fit", *args])
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "stochastic_game" / "Coma" / "version_0"))
    events = EventAccumulator(run_dir)
    events.Reload()
    evaluations = [(e.step, e.value) for e in events.Scalars("eval/return")]
    assert len(evaluations) >= 5
    best_step, best_return = max(evaluations, key=lambda e: (e[1], -e[0]))  # the first of the best

    best = torch.load(os.path.join(run_dir, "checkpoints", "best.ckpt"), weights_only=True)
    assert best["best"] == {"metric": "eval/return", "value": pytest.approx(best_return), "env_steps": best_step}
    assert best["EpisodeDataModule"]["env_steps"] == best_step and "buffer" not in best["EpisodeDataModule"]
    assert "optimizer_states" not in best
    last = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert last["callbacks"]["Evaluation"]["best"]["env_steps"] == best_step  # kept across a resume
    if best_step != last["EpisodeDataModule"]["env_steps"]:
        assert not torch.equal(best["state_dict"]["actor.head.weight"], last["state_dict"]["actor.head.weight"])

    capsys.readouterr()
    main(["test", *args, "--ckpt_path", "best", "--evaluation.episodes", "6"])
    assert "test/return" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--ckpt_path", "best"])
    assert exit_.value.code == 2
    assert "--ckpt_path best" in capsys.readouterr().err


def test_a_checkpoint_with_settings_since_renamed_loads_or_names_the_setting(tmp_path, monkeypatch, capsys):
    assert upgrade_settings("QmixDmac", {"mixer_hidden_dim": 16, "omega": 0.1}) == {"mixing_embed_dim": 16, "omega": 0.1}
    assert upgrade_settings("Qmix", {"mixer_hidden_dim": 16}) == {"mixer_hidden_dim": 16}  # only where it was renamed
    with pytest.raises(RenamedSettingError, match=r"model\.critic_hidden_dims: .* now model\.critic_hidden_dim; .*GRU"):
        upgrade_settings("FopDmac", {"critic_hidden_dims": [64, 64]})

    # Through the CLI: a QMIX+DMAC checkpoint as an older version wrote it (mixer_hidden_dim) resumes with
    # the width it was trained with; a FOP one of before the published critics stops with one line.
    monkeypatch.chdir(tmp_path)
    args = [*config_args("qmix_dmac"), *QUICK, "--data.warmup_episodes", "0", "--model.init_args.mixing_embed_dim", "16"]
    main(["fit", *args, "--data.max_env_steps", "80"])
    (path,) = glob.glob(str(tmp_path / "lightning_logs" / "stochastic_game" / "QmixDmac" / "version_0" / "checkpoints" / "last.ckpt"))
    old = torch.load(path, weights_only=True)
    old["hyper_parameters"]["mixer_hidden_dim"] = old["hyper_parameters"].pop("mixing_embed_dim")
    torch.save(old, tmp_path / "old.ckpt")
    main(["fit", *config_args("qmix_dmac"), *QUICK, "--data.warmup_episodes", "0", "--data.max_env_steps", "160",
          "--ckpt_path", str(tmp_path / "old.ckpt")])  # without the checkpoint's width, loading its mixer would fail
    resumed = glob.glob(str(tmp_path / "lightning_logs" / "stochastic_game" / "QmixDmac" / "*" / "checkpoints" / "last.ckpt"))
    assert max(torch.load(p, weights_only=True)["EpisodeDataModule"]["env_steps"] for p in resumed) >= 160

    old["hyper_parameters"] = {"critic_hidden_dims": [64, 64]}
    torch.save(old, tmp_path / "old_fop.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["test", *config_args("fop"), *QUICK, "--ckpt_path", str(tmp_path / "old_fop.ckpt")])
    assert exit_.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "model.critic_hidden_dims" in line and "model.critic_hidden_dim;" in line
