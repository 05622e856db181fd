"""The DMAC authors' settings as presets (configs/algorithms/authors/): each builds the algorithm the
authors' default path describes, differs from our default in exactly the settings docs/algorithms.md
lists, and is one config away in ``dmac fit`` and ``dmac-sweep --preset``."""

import pytest

from conftest import CONFIGS
from dmac_lightning.algorithms import algorithm
from dmac_lightning.cli import DMACCLI
from dmac_lightning.experiments import sweep


def resolved(name: str, env: str, map_name: str | None = None, preset: str | None = None) -> DMACCLI:
    files = algorithm(name).configs(env, map_name, root=CONFIGS, preset=preset)
    return DMACCLI(args=[arg for path in files for arg in ("--config", path)] + ["--trainer.logger", "false"], run=False)


def differences(name: str, env: str, map_name: str | None = None) -> dict[str, tuple]:
    """Every model, data and evaluation setting where the preset and the shipped file disagree."""
    ours, theirs = resolved(name, env, map_name), resolved(name, env, map_name, preset="authors")
    changed = {}
    for section in ("model", "data", "evaluation"):
        a, b = (dict(cli.config[section].init_args if section == "model" else cli.config[section]) for cli in (ours, theirs))
        changed.update({f"{section}.{k}": (a[k], b[k]) for k in a if a[k] != b[k]})
    return changed


def test_dop_dmac_preset_on_smax_is_the_authors_three_settings_and_their_smac_protocol():
    assert differences("dop_dmac", "smax", "3m") == {
        "model.lr_actor": (0.0001, 0.0005),
        "model.lr_critic": (0.001, 0.0005),
        "model.omega": (0.01, 0.1),  # their omega = 1 / reward_scale, reward_scale 10
        "model.target_critic_copy_every": (None, 200),
        "data.max_env_steps": (1_000_000, 2_050_000),
        "evaluation.episodes": (20, 32),
    }
    cli = resolved("dop_dmac", "smax", "3m", preset="authors")
    assert type(cli.model).__name__ == "DopDmac" and not cli.model.greedy_evaluation
    assert cli.model.target_critic_copy_every == 200 and cli.model.omega == 0.1


def test_on_the_stochastic_game_the_presets_keep_the_games_omega_budget_and_evaluation():
    assert differences("dop_dmac", "stochastic_game") == {
        "model.lr_actor": (0.0001, 0.0005),
        "model.lr_critic": (0.001, 0.0005),
        "model.target_critic_copy_every": (None, 200),
    }
    assert resolved("dop_dmac", "stochastic_game", preset="authors").model.omega == 0.2
    assert differences("fop", "stochastic_game") == {"model.lr_actor": (0.0001, 0.0005), "model.lr_critic": (0.001, 0.0005)}


def test_fop_preset_on_smax_changes_the_learning_rates_and_the_protocol():
    assert differences("fop", "smax", "3m") == {
        "model.lr_actor": (0.0001, 0.0005),
        "model.lr_critic": (0.001, 0.0005),
        "data.max_env_steps": (2_000_000, 2_050_000),
        "evaluation.interval": (20_000, 10_000),
        "evaluation.episodes": (20, 32),
    }
    assert resolved("fop", "smax", "3m", preset="authors").model.greedy_evaluation


def test_sweep_preset_labels_runs_and_refuses_what_it_cannot_do(tmp_path, capsys):
    (run,) = sweep.plan(sweep.algorithm_configs(["dop_dmac"], preset="authors"), [0])
    assert run.label == "dop_dmac-authors"
    assert run.configs == (
        "configs/algorithms/authors/dop_dmac.yaml", "configs/stochastic_game/game.yaml", "configs/stochastic_game/dmac.yaml"
    )
    common = ["--name", "p", "--root", str(tmp_path), "--seeds", "0"]
    with pytest.raises(SystemExit):
        sweep.main([*common, "--algorithms", "coma", "--preset", "authors"])
    assert "preset 'authors' has no config for 'coma'; it has: dop_dmac, fop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main([*common, "--algorithms", "dop_dmac", "--preset", "mine"])
    assert "no such folder configs/algorithms/mine; allowed values: authors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main([*common, "--configs", "x.yaml", "--preset", "authors"])
    assert "--preset goes with --algorithms" in capsys.readouterr().err
