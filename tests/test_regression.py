"""Behaviour freeze: each algorithm's first updates and final weights on a fixed, seeded run.

For each of the ten algorithms (class defaults: the paper's stochastic-game hyperparameters), a
seeded run on the reduced stochastic game records the critic and actor losses of its first
``RECORDED_UPDATES`` updates and a checksum (sum and sum of squares) of every tensor of its final
state dict into ``fixtures/regression.json``; this test reproduces them.

A pure refactor must leave them unchanged (bit-identical is expected; 1e-6 relative is allowed for a
changed float summation order). A deliberate behaviour change regenerates the fixture in the same
commit, saying why:

    DMAC_UPDATE_REGRESSION=1 .venv/bin/python -m pytest tests/test_regression.py
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from datamodules import EpisodeDataModule
from dmac_lightning.algorithms import ALGORITHMS

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "regression.json")
UPDATE = os.environ.get("DMAC_UPDATE_REGRESSION") == "1"
RECORDED_UPDATES = 20
RELATIVE_TOLERANCE = 1e-6
# The reduced game of docs/results; 8 episodes of 10 steps per collect, 4 updates after each.
DATA = dict(
    env="stochastic_game",
    env_kwargs={"n_states": 10, "n_agents": 3, "n_actions": 3, "episode_limit": 10, "game_seed": 0},
    n_envs=8, episodes_per_collect=8, updates_per_episode=0.5, batch_size=8, buffer_size=64,
    max_env_steps=480, env_steps_per_epoch=480, seed=0,
)
LOSS_TAGS = ("loss/critic", "loss/actor", "loss/q")


class LossRecorder(Logger):
    """Keeps every logged loss, in order (``log_every_n_steps=1``: one entry per update)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[str, list[float]] = {}

    @property
    def name(self) -> str:
        return "loss_recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for tag in LOSS_TAGS:
            if tag in metrics:
                self.losses.setdefault(tag, []).append(float(metrics[tag]))


def run(name: str) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order, whatever the machine's core count
    try:
        pl.seed_everything(0, verbose=False)
        module = ALGORITHMS[name]()
        recorder = LossRecorder()
        trainer = pl.Trainer(
            max_epochs=-1, logger=recorder, log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(module, EpisodeDataModule(**DATA))
    finally:
        torch.set_num_threads(threads)
    checksums = {
        key: [float(value.double().sum()), float((value.double() ** 2).sum())]
        for key, value in module.state_dict().items()
        if value.is_floating_point()
    }
    return {
        "env_steps": trainer.datamodule.env_steps,
        "losses": {tag: values[:RECORDED_UPDATES] for tag, values in recorder.losses.items()},
        "checksums": checksums,
    }


def _close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-9)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_updates_and_final_weights_match_the_fixture(name):
    result = run(name)
    if UPDATE:
        stored = json.load(open(FIXTURE)) if os.path.exists(FIXTURE) else {}
        stored[name] = result
        os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
        with open(FIXTURE, "w") as f:
            json.dump(dict(sorted(stored.items())), f, indent=1)
        pytest.skip("fixture regenerated")
    expected = json.load(open(FIXTURE))[name]
    assert result["env_steps"] == expected["env_steps"]
    assert sorted(result["losses"]) == sorted(expected["losses"])
    for tag, values in expected["losses"].items():
        assert len(values) == RECORDED_UPDATES, f"{name}: the fixture has fewer than {RECORDED_UPDATES} {tag} values"
        for update, (actual, wanted) in enumerate(zip(result["losses"][tag], values)):
            assert _close(actual, wanted), f"{name}: {tag} at update {update}: {actual!r} != {wanted!r}"
    assert sorted(result["checksums"]) == sorted(expected["checksums"]), f"{name}: the state dict's tensors changed"
    for key, (total, squares) in expected["checksums"].items():
        actual_total, actual_squares = result["checksums"][key]
        assert _close(actual_total, total) and _close(actual_squares, squares), (
            f"{name}: final {key} differs: sum {actual_total!r} vs {total!r}, squares {actual_squares!r} vs {squares!r}"
        )
