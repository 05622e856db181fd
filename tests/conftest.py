import os
import sys
import warnings

import pytest
from hypothesis import settings

# The property tests draw the same games on every run: CI must not pass or fail by the luck of the draw.
settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

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
