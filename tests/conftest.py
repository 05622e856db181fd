import os
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SMALL_GAME = {"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": 5, "game_seed": 0}

warnings.filterwarnings("ignore", message=".*dataloader_iter.*")


@pytest.fixture
def small_game() -> dict:
    return dict(SMALL_GAME)


def dmac_command(*args: str) -> list[str]:
    """``python -m dmac_lightning ...`` with the interpreter running the tests."""
    return [sys.executable, "-m", "dmac_lightning", *args]
