"""Seeded behavioural tests with small budgets: does the algorithm actually learn?"""

import json
import os

import pytest

from conftest import CONFIGS, SMALL_GAME
from dmac_lightning.cli import DMACCLI
from dmac_lightning.evaluation import evaluate_episodes

pytestmark = pytest.mark.slow


def train(config: str, *overrides: str):
    cli = DMACCLI(
        args=[
            "--config", os.path.join(CONFIGS, config),
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


def final_return_ratio(cli, episodes: int = 1000) -> float:
    data, module = cli.datamodule, cli.model
    env = data.wrap_env(data.make_env(250, seed=12345))
    mode = "greedy" if module.greedy_evaluation else "sample"
    metrics = evaluate_episodes(env, module.policy(mode), episodes, data.env_info.episode_limit)
    return metrics["return_ratio"]


@pytest.mark.parametrize("config", ["coma_dmac", "qmix_dmac", "dop_dmac"])
def test_dmac_variant_reaches_90_percent_of_the_exact_optimum(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 2 agents x 3 actions, 3 states, 5 steps; a larger actor learning rate than the paper's 1e-4
    # so that 20k env steps (about 30 s on 2 cores) suffice. Random play gets about 0.2.
    cli = train(
        f"stochastic_game/{config}.yaml",
        "--data.max_env_steps", "20000", "--data.batch_size", "16",
        "--model.init_args.lr_actor", "1e-3", "--evaluation.interval", "20000",
    )
    assert cli.datamodule.env_steps >= 20000
    assert final_return_ratio(cli) >= 0.9
