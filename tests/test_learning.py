"""Seeded behavioural tests with small budgets: does the algorithm actually learn?"""

import json

import pytest

from conftest import SMALL_GAME, config_args
from dmac_lightning.cli import DMACCLI
from dmac_lightning.evaluation import evaluate_episodes

pytestmark = pytest.mark.slow


def train(configs: list[str], *overrides: str):
    cli = DMACCLI(
        args=[
            *configs,
            "--data.env_kwargs", json.dumps(SMALL_GAME),
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false",
            "--evaluation.at_start", "false",
            *overrides,
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def final_metrics(cli, episodes: int, n_envs: int, seed: int = 12345) -> dict:
    data, module = cli.datamodule, cli.model
    env = data.wrap_env(data.make_env(n_envs, seed=seed))
    mode = "greedy" if module.greedy_evaluation else "sample"
    return evaluate_episodes(env, module.policy(mode), episodes, data.env_info.episode_limit)


def final_return_ratio(cli, episodes: int = 1000) -> float:
    data, module = cli.datamodule, cli.model
    env = data.wrap_env(data.make_env(250, seed=12345))
    mode = "greedy" if module.greedy_evaluation else "sample"
    metrics = evaluate_episodes(env, module.policy(mode), episodes, data.env_info.episode_limit)
    return metrics["return_ratio"]


# Final return ratios measured on seeds 0-3 (1000 episodes each): COMA+DMAC 0.994-0.998, QMIX+DMAC
# 0.995-0.999, DOP+DMAC 0.944-1.0 (0.944 on seed 2: DOP+DMAC has a second, slightly worse mode). Another
# CPU's rounding makes another trajectory, as another seed would: each bar sits below every seed measured.
BARS = {"coma_dmac": 0.9, "qmix_dmac": 0.9, "dop_dmac": 0.85}


@pytest.mark.parametrize("config", sorted(BARS))
def test_dmac_variant_reaches_most_of_the_exact_optimum(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 2 agents x 3 actions, 3 states, 5 steps, with the paper's hyperparameters and the authors' DMAC
    # schedule (4 updates per episode, 8 replayed + 4 recent episodes, after 100): 4000 env steps
    # (about 40 s on 2 cores). Random play gets about 0.2.
    cli = train(config_args(config), "--data.max_env_steps", "4000", "--evaluation.interval", "4000")
    assert cli.datamodule.env_steps >= 4000
    assert final_return_ratio(cli) >= BARS[config]


# Eval win rate after 25k env steps on SMAX 3m (SMAC's state since commit 6c9edef), seeds 0, 1, 2:
# QMIX as shipped (8 envs, greedy, 32 episodes at the sweep's evaluation): 0.47, 0.56, 0.41; QMIX+DMAC at the
# paper's omega 0.01 with 32 envs (200 sampled episodes): 0.46, 0.49, 0.51. Untrained both win none.
# Before the state fix QMIX won nothing by 1M env steps, and QMIX+DMAC at omega 0.01 stayed at 0.1 on 2 of 3
# seeds (docs/results/README.md, section 3): the bar, 0.25, sits below every seed measured and far above both.
SMAX_RUNS = {"qmix": [], "qmix_dmac": ["--data.n_envs", "32", "--data.episodes_per_collect", "32"]}


@pytest.mark.parametrize("name", sorted(SMAX_RUNS))
def test_learns_to_win_on_smax_3m(name, tmp_path, monkeypatch):
    pytest.importorskip("jaxmarl")
    monkeypatch.chdir(tmp_path)
    cli = DMACCLI(
        args=[
            *config_args(name, "smax", "3m"), *SMAX_RUNS[name],
            "--data.max_env_steps", "25000", "--evaluation.interval", "1000000", "--evaluation.at_start", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        ],
        run=False,
    )
    cli.datamodule.connect(cli.model)
    cli.datamodule.setup("fit")
    cli.model.configure_env(cli.datamodule.env_info)
    untrained = final_metrics(cli, episodes=100, n_envs=50)
    assert untrained["win_rate"] <= 0.05
    cli.trainer.fit(cli.model, cli.datamodule)
    assert final_metrics(cli, episodes=200, n_envs=100)["win_rate"] >= 0.25
