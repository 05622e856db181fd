"""The real-SMAC wrapper against a stand-in for ``smac.env.StarCraft2Env`` (no StarCraft II here)."""

import glob
import importlib
import logging
import os
import sys

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from conftest import ALGORITHM_FILES, CONFIGS, ROOT, compose_and_check, config_args
from dmac_lightning.envs import check_env_config, make_env

STAND_INS = os.path.join(ROOT, "tests", "stand_ins")


def forget_smac():
    for name in [m for m in sys.modules if m.split(".")[0] in ("smac", "smacv2")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def starcraft(tmp_path, monkeypatch):
    """The stand-in on the import path and a StarCraft II directory with one installed build and the SMAC maps."""
    sc2 = tmp_path / "StarCraftII"
    (sc2 / "Versions" / "Base75689").mkdir(parents=True)
    (sc2 / "Maps" / "SMAC_Maps").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(sc2))
    monkeypatch.setenv("STAND_IN_SC2_LOG", str(tmp_path / "sc2.log"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([STAND_INS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(STAND_INS)
    forget_smac()
    yield tmp_path
    forget_smac()


def available_policy(attack: bool = True):
    def policy(td):
        mask = td["agents", "action_mask"].clone()
        if not attack:  # never shoot: the battle can only end by the time limit
            mask[..., 6:] = False
            mask[..., 0] |= ~mask.any(-1)
        td["agents", "action"] = torch.multinomial(mask.float().flatten(0, -2), 1).view(mask.shape[:-1])
        return td

    return policy


def test_single_game_layout_and_specs(starcraft):
    from dmac_lightning.envs.smac import StarCraftEnv

    env = StarCraftEnv("3m", seed=0)
    check_env_specs(env)  # random actions come from the spec, masked to the available ones
    assert env.info.n_agents == 3 and env.info.n_actions == 9 and env.info.episode_limit == 60
    td = env.reset()
    assert td["agents", "observation"].shape == (3, env.info.obs_dim)
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["state"].shape == (env.info.state_dim,)
    assert env._game.continuing_episode is True  # SMAC reports time-outs only with it
    env.close()


def test_win_is_a_termination_and_the_time_limit_a_truncation(starcraft):
    env = make_env("smac", {"map_name": "3m", "parallel": False}, n_envs=2, seed=0)
    won = env.rollout(60, available_policy(attack=True), break_when_any_done=False)
    done = won["next", "done"][..., 0]
    first = done.float().argmax(1)
    assert done.any(1).all()
    ends = won["next"][torch.arange(2), first]  # each game's first episode ends in a won battle
    assert ends["terminated"].all() and ends["info", "battle_won"].all() and not ends["truncated"].any()
    assert won["next", "reward"].sum() > 0
    waited = env.rollout(60, available_policy(attack=False), break_when_any_done=False)
    assert waited.shape == (2, 60)
    final = waited["next"][:, -1]
    assert final["truncated"].all() and final["done"].all()
    assert not final["terminated"].any() and not final["info", "battle_won"].any()
    assert not waited["next", "done"][:, :-1].any()
    env.close()


@pytest.mark.parametrize("failure", ["STAND_IN_SC2_CRASH_ON_STEP", "STAND_IN_SC2_RAISE_ON_STEP"])
def test_a_crash_restarts_the_game_and_marks_only_that_episode(starcraft, monkeypatch, caplog, failure):
    """Both ways SC2 fails: SMAC catches it, relaunches SC2 and returns (0, True, {}); or an error it
    does not catch reaches the wrapper, which launches a fresh game itself."""
    from dmac_lightning.envs.smac import StarCraftEnv

    monkeypatch.setenv(failure, "3")
    import smac.env

    smac.env._STEP_CALLS["count"] = 0
    env = StarCraftEnv("3m", seed=0)
    policy = available_policy(attack=False)
    td = env.reset()
    with caplog.at_level(logging.WARNING):
        for step in range(1, 6):
            td = env.step(policy(td))
            broken = td["next", "info", "episode_broken"].item()
            assert broken == (step == 3)
            if broken:
                assert td["next", "done"].item() and td["next", "truncated"].item()
                assert not td["next", "terminated"].item() and td["next", "reward"].item() == 0
                td = env.reset()
            else:
                td = td["next"]
    assert env.restarts == 1
    assert "restarting it and dropping this episode" in caplog.text
    events = (starcraft / "sc2.log").read_text().split()
    assert events[::2] == ["launch", "close", "launch"]
    env.close()


def test_the_data_module_drops_the_broken_episode(starcraft, monkeypatch):
    from datamodules import EpisodeDataModule
    from dmac_lightning.algorithms import QmixDmac

    monkeypatch.setenv("STAND_IN_SC2_CRASH_ON_STEP", "5")
    import smac.env

    smac.env._STEP_CALLS["count"] = 0
    data = EpisodeDataModule(env="smac", env_kwargs={"map_name": "3m", "parallel": False}, n_envs=2,
                             episodes_per_collect=2, batch_size=1, buffer_size=8, seed=0)
    module = QmixDmac()
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    kept = data.collect()
    assert data.dropped_episodes == 1  # one episode was broken and is gone; collection went on for another
    assert kept.batch_size[0] == 2 and data.episodes == 2 and data.env_steps == int(kept["filled"].sum())
    assert data.last_collect["train/dropped_episodes"] == 1
    data.env.close()


def test_evaluation_replays_broken_episodes_instead_of_counting_them(starcraft, monkeypatch):
    from dmac_lightning.evaluation import evaluate_episodes

    monkeypatch.setenv("STAND_IN_SC2_CRASH_ON_STEP", "3")  # one game of the first round breaks at its second step
    import smac.env

    smac.env._STEP_CALLS["count"] = 0
    env = make_env("smac", {"map_name": "3m", "parallel": False}, n_envs=2, seed=0)
    metrics = evaluate_episodes(env, available_policy(attack=False), episodes=4, episode_limit=60)
    assert metrics["episode_length"] == 60  # only the intact time-outs; the 2-step broken episode is not among them
    assert metrics["win_rate"] == 0
    env.close()


def test_parallel_workers_run_and_close_their_games(starcraft):
    env = make_env("smac", {"map_name": "3m"}, n_envs=2, seed=0)
    assert type(env).__name__ == "StarCraftParallelEnv"
    rollout = env.rollout(10, available_policy(), break_when_any_done=False)
    assert rollout["agents", "observation"].shape == (2, 10, 3, env.info.obs_dim)
    env.close()
    events = (starcraft / "sc2.log").read_text().split("\n")
    launches = [e for e in events if e.startswith("launch")]
    closes = [e for e in events if e.startswith("close")]
    assert len(launches) == len(closes) >= 3  # a probe for the sizes, then one game per worker
    assert len({e.split()[1] for e in launches}) >= 3  # in separate processes


def test_fit_on_the_stand_in_records_the_sc2_version(starcraft, monkeypatch):
    from dmac_lightning.cli import main

    monkeypatch.chdir(starcraft)
    main(
        [
            "fit", "--config", os.path.join(CONFIGS, "smac", "3m.yaml"),
            "--config", os.path.join(CONFIGS, "algorithms", "qmix_dmac.yaml"),
            "--data.env_kwargs", '{"map_name": "3m", "parallel": false}',
            "--data.n_envs", "2", "--data.episodes_per_collect", "2", "--data.batch_size", "2",
            "--data.max_env_steps", "120", "--data.env_steps_per_epoch", "120",
            "--evaluation.interval", "120", "--evaluation.episodes", "2", "--evaluation.n_envs", "2",
            "--trainer.enable_progress_bar", "false",
        ]
    )
    hparams = (starcraft / "lightning_logs" / "smac_3m" / "QmixDmac" / "version_0" / "hparams.yaml").read_text()
    assert "sc2_version: Base75689" in hparams


def test_smacv2_maps_draw_their_units_through_the_capability_wrapper(starcraft):
    capability_config = {"n_units": 5, "n_enemies": 5, "team_gen": {"dist_type": "weighted_teams", "unit_types": ["marine", "marauder"]}}
    with pytest.raises(ValueError, match=r"10gen_terran.*needs data.env_kwargs.capability_config"):
        check_env_config("smacv2", {"map_name": "10gen_terran"})
    settings = {"map_name": "10gen_terran", "capability_config": capability_config, "parallel": False}
    check_env_config("smacv2", settings)
    env = make_env("smacv2", settings, n_envs=2, seed=0)
    rollout = env.rollout(5, available_policy(), break_when_any_done=False)
    assert rollout["agents", "observation"].shape == (2, 5, 5, env.info.obs_dim)
    import smacv2.env

    games = [game._game for game in env._envs]
    assert all(isinstance(game, smacv2.env.StarCraftCapabilityEnvWrapper) for game in games)
    assert all(game.env.episode_config["team_gen"]["ally_team"][:2] == ["marine", "marauder"] for game in games)
    env.close()


def test_continuing_episode_cannot_be_turned_off(starcraft):
    with pytest.raises(ValueError, match=r"continuing_episode must be true"):
        check_env_config("smac", {"map_name": "3m", "continuing_episode": False})


# -- missing dependencies: clear errors before anything starts ------------------------------------
def test_missing_smac_package(monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    forget_smac()
    with pytest.raises(ImportError, match=r"needs the 'smac' package, which is not installed(.|\n)*oxwhirl/smac.git"):
        check_env_config("smac", {"map_name": "3m"})


def test_pypi_smac3_is_detected(monkeypatch, tmp_path):
    site = tmp_path / "site"
    (site / "smac").mkdir(parents=True)
    (site / "smac" / "__init__.py").write_text("class HyperparameterOptimizationFacade:\n    pass\n")
    (site / "smac-2.0.2.dist-info").mkdir()
    (site / "smac-2.0.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: smac\nVersion: 2.0.2\nSummary: SMAC3, a Python Library for Hyperparameter Optimization\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    forget_smac()
    try:
        with pytest.raises(ImportError, match=r"PyPI's SMAC3(.|\n)*pip uninstall smac"):
            check_env_config("smac", {"map_name": "3m"})
    finally:
        forget_smac()


def test_missing_starcraft(starcraft, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(starcraft / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"StarCraft II not found: SC2PATH .*nowhere"):
        check_env_config("smac", {"map_name": "3m"})
    monkeypatch.delenv("SC2PATH")
    monkeypatch.setenv("HOME", str(starcraft / "empty_home"))
    with pytest.raises(FileNotFoundError, match=r"SC2PATH is not set"):
        check_env_config("smac", {"map_name": "3m"})


def test_missing_smac_maps(starcraft):
    (starcraft / "StarCraftII" / "Maps" / "SMAC_Maps").rmdir()
    with pytest.raises(FileNotFoundError, match=r"SMAC maps are not installed(.|\n)*SMAC_Maps.zip"):
        check_env_config("smac", {"map_name": "3m"})


def test_protobuf_without_the_python_implementation_is_explained(monkeypatch, tmp_path):
    site = tmp_path / "site"
    (site / "smac" / "env").mkdir(parents=True)
    (site / "smac" / "__init__.py").write_text("")
    (site / "smac" / "env" / "__init__.py").write_text(
        "raise TypeError('Descriptors cannot be created directly. If this call came from a _pb2.py file, ...')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    forget_smac()
    try:
        with pytest.raises(ImportError, match=r"export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python"):
            check_env_config("smac", {"map_name": "3m"})
    finally:
        forget_smac()


def test_cli_reports_missing_smac_before_training(monkeypatch, tmp_path, capsys):
    from dmac_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    forget_smac()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", os.path.join(CONFIGS, "smac", "MMM2.yaml"), "--config", os.path.join(CONFIGS, "algorithms", "qmix_dmac.yaml")])
    assert exit_info.value.code == 2
    assert "oxwhirl/smac.git" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_FILES))
def test_every_algorithm_composes_with_every_paper_map(starcraft, monkeypatch, algorithm):
    from dmac_lightning.envs.smac import PAPER_MAPS

    monkeypatch.chdir(starcraft)
    maps = sorted(os.path.basename(path)[:-5] for path in glob.glob(os.path.join(CONFIGS, "smac", "*.yaml")))
    assert maps == sorted(PAPER_MAPS)
    for map_name in maps:
        compose_and_check("smac", map_name, algorithm)


SMACV2_SCENARIOS = [f"{race}_{n}_vs_{n}" for race in ("protoss", "terran", "zerg") for n in (5, 10)]


def test_the_smacv2_scenario_files_are_smacv2s_standard_six():
    scenarios = sorted(os.path.basename(path)[:-5] for path in glob.glob(os.path.join(CONFIGS, "smacv2", "*.yaml")))
    assert scenarios == sorted(SMACV2_SCENARIOS)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_FILES))
def test_every_algorithm_composes_with_every_smacv2_scenario(starcraft, monkeypatch, algorithm):
    from dmac_lightning.cli import DMACCLI

    monkeypatch.chdir(starcraft)
    for scenario in SMACV2_SCENARIOS:
        race, n = scenario.split("_")[0], int(scenario.split("_")[1])
        cli = DMACCLI(args=[*config_args(algorithm, "smacv2", scenario), "--trainer.logger", "false"], run=False)
        assert type(cli.model).__name__ == ALGORITHM_FILES[algorithm]
        kwargs = cli.datamodule.env_kwargs
        assert cli.datamodule.env_name == "smacv2" and kwargs["map_name"] == f"10gen_{race}"
        assert (kwargs["capability_config"]["n_units"], kwargs["capability_config"]["n_enemies"]) == (n, n)
        assert kwargs["capability_config"]["start_positions"]["dist_type"] == "surrounded_and_reflect"
        budget = 2_000_000 if algorithm.startswith("fop") else 10_050_000  # the FOP files carry the paper's SMAC budget
        assert cli.datamodule.max_env_steps == budget


def test_a_smacv2_scenario_plays_with_its_teams_size(starcraft, monkeypatch):
    from dmac_lightning.cli import DMACCLI

    monkeypatch.chdir(starcraft)
    cli = DMACCLI(args=[*config_args("qmix_dmac", "smacv2", "zerg_10_vs_10"), "--data.n_envs", "2",
                        "--data.env_kwargs.parallel", "false", "--trainer.logger", "false"], run=False)
    data = cli.datamodule
    env = data.make_env(2, seed=0)
    assert (env.info.n_agents, env.info.n_actions) == (10, 6 + 10)
    rollout = env.rollout(3, available_policy(), break_when_any_done=False)
    assert rollout["agents", "observation"].shape == (2, 3, 10, env.info.obs_dim)
    games = [game._game for game in env._envs]
    assert all(game.env.episode_config["team_gen"]["ally_team"][:3] == ["zergling", "baneling", "hydralisk"] for game in games)
    env.close()


def test_evaluation_saves_a_starcraft_replay_of_every_evaluation_game(starcraft, monkeypatch):
    from dmac_lightning.cli import DMACCLI

    monkeypatch.chdir(starcraft)
    cli = DMACCLI(args=[*config_args("qmix_dmac", "smac", "3m"), "--data.n_envs", "2", "--data.episodes_per_collect", "2",
                        "--data.batch_size", "2", "--data.warmup_episodes", "0", "--data.max_env_steps", "120",
                        "--data.env_steps_per_epoch", "120", "--evaluation.interval", "1000", "--evaluation.episodes", "2",
                        "--evaluation.n_envs", "2", "--evaluation.render_episodes", "1", "--trainer.enable_progress_bar", "false"],
                  run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    replays = sorted(glob.glob(str(starcraft / "lightning_logs" / "smac_3m" / "QmixDmac" / "version_0" / "replays" / "*.SC2Replay")))
    # evaluations at 0 and at the end, each: both evaluation games' replays (one SC2 session per game)
    assert len(replays) == 4, replays
    assert {os.path.basename(path).split("_seed")[0] for path in replays} == {"eval_0", f"eval_{cli.datamodule.env_steps}"}
    assert all(open(path).read().startswith("3m: ") for path in replays)
