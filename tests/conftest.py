import os
import sys
import warnings

import pytest
import torch
from hypothesis import settings

from dmac_lightning.algorithms import REGISTRY, algorithm

# The property tests draw the same games on every run: CI must not pass or fail by the luck of the draw.
settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SMALL_GAME = {"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": 5, "game_seed": 0}

warnings.filterwarnings("ignore", message=".*dataloader_iter.*")

# One torch/OpenMP thread in the tests and in every process they start (CLI runs, DDP ranks): the same
# summation order whatever the machine's core count, and no threads spinning on cores other work holds
# (on 2 busy cores a run with two threads took 19 times as long as with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def small_game() -> dict:
    return dict(SMALL_GAME)


def dmac_command(*args: str) -> list[str]:
    """``python -m dmac_lightning ...`` with the interpreter running the tests."""
    return [sys.executable, "-m", "dmac_lightning", *args]


# Algorithm config name -> class name, from the one registry.
ALGORITHM_FILES = {entry.name: entry.module.__name__ for entry in REGISTRY}


def config_args(name: str, env: str = "stochastic_game", map_name: str | None = None) -> list[str]:
    """``--config`` arguments of a run of algorithm ``name`` (``coma_dmac``), composed as the registry says."""
    return [arg for path in algorithm(name).configs(env, map_name, root=CONFIGS) for arg in ("--config", path)]


def compose_and_check(env: str, map_name: str, algorithm: str) -> None:
    """``dmac fit --config configs/<env>/<map>.yaml --config configs/algorithms/<algorithm>.yaml`` builds
    the right objects with the paper's SMAC settings (App. C.2, C.3)."""
    from callbacks import Evaluation
    from dmac_lightning.cli import DMACCLI

    cli = DMACCLI(args=[*config_args(algorithm, env, map_name), "--trainer.logger", "false"], run=False)
    assert type(cli.model).__name__ == ALGORITHM_FILES[algorithm]
    assert cli.datamodule.env_name == env and cli.datamodule.env_kwargs["map_name"] == map_name
    fop_group, long_map = algorithm.startswith("fop"), map_name in ("2c_vs_64zg", "MMM2")
    assert cli.datamodule.max_env_steps == (2_000_000 if fop_group or long_map else 1_000_000)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, Evaluation))
    assert (evaluation.interval, evaluation.episodes) == (20_000 if fop_group else 10_000, 20)
    assert cli.model.greedy_evaluation == (algorithm in ("qmix", "fop"))
    if algorithm.endswith("_dmac"):
        assert (cli.model.omega, cli.model.tau) == (0.01, 0.01)
