"""Behaviour freeze: each algorithm's first updates and final weights on a fixed, seeded run.

For each of the ten algorithms (class defaults: the paper's stochastic-game hyperparameters), a
seeded run on the reduced stochastic game records the critic and actor losses of its first
``RECORDED_UPDATES`` updates and a checksum (sum and sum of squares) of every tensor of its final
state dict into ``fixtures/regression.json``; this test reproduces them.

Why float64: float32 kernels round differently on different CPUs (MKL, oneDNN and ATen's AVX-512,
AVX2 and scalar paths), and over 20 updates those differences grow: measured on one machine, the
float32 losses under ``ATEN_CPU_CAPABILITY=default`` differ from its AVX-512 ones by up to 6e-6 (Coma)
and 4e-5 (QmixDmac) relative, about what a small change of a hyperparameter does early on. So the
run is made in float64 (the default dtype for the run: the game, the replay buffer and the networks
follow it). There the three kernel sets gave bit-identical results on that machine, and other CPUs'
float64 rounding (1e-16 per operation) stays many orders of magnitude below ``RELATIVE_TOLERANCE``
(1e-8), while the smallest deliberate changes move some recorded value by 190% or more:
``test_the_guard_catches_small_changes`` checks that td_lambda 0.8 -> 0.79, tau 0.01 -> 0.011, RMSprop
eps 1e-5 -> 1e-6 and one update fewer per collect all fail the guard. It must pass with
``ATEN_CPU_CAPABILITY`` unset, ``=default`` and ``=avx2``; ``make test`` (and so CI) runs it under
``default`` as well as the machine's own kernels.

A pure refactor must leave the fixture unchanged. A deliberate behaviour change regenerates it in
the same commit, saying why:

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
RELATIVE_TOLERANCE = 1e-8
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


def run(name: str, data: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """The recorded run of algorithm ``name`` (``settings``: its arguments; ``data``: changes to ``DATA``)."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)  # one summation order, whatever the machine's core count
    torch.set_default_dtype(torch.float64)  # see the module docstring
    try:
        pl.seed_everything(0, verbose=False)
        module = ALGORITHMS[name](**settings)
        recorder = LossRecorder()
        trainer = pl.Trainer(
            max_epochs=-1, logger=recorder, log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(module, EpisodeDataModule(**{**DATA, **(data or {})}))
        assert next(module.parameters()).dtype == torch.float64
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
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
    return math.isclose(actual, expected, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)


def differences(name: str, result: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Where ``result`` departs from the fixture's ``expected`` (empty: the same behaviour)."""
    found = []
    if result["env_steps"] != expected["env_steps"]:
        found.append(f"{name}: {result['env_steps']} env steps, the fixture {expected['env_steps']}")
    if sorted(result["losses"]) != sorted(expected["losses"]):
        found.append(f"{name}: logged losses {sorted(result['losses'])}, the fixture {sorted(expected['losses'])}")
    for tag, values in expected["losses"].items():
        assert len(values) == RECORDED_UPDATES, f"{name}: the fixture has fewer than {RECORDED_UPDATES} {tag} values"
        actual_values = result["losses"].get(tag, [])
        if len(actual_values) < RECORDED_UPDATES:
            found.append(f"{name}: only {len(actual_values)} {tag} values")
        for update, (actual, wanted) in enumerate(zip(actual_values, values)):
            if not _close(actual, wanted):
                found.append(f"{name}: {tag} at update {update}: {actual!r} != {wanted!r}")
    if sorted(result["checksums"]) != sorted(expected["checksums"]):
        found.append(f"{name}: the state dict's tensors changed")
    for key, (total, squares) in expected["checksums"].items():
        actual_total, actual_squares = result["checksums"].get(key, (math.nan, math.nan))
        if not (_close(actual_total, total) and _close(actual_squares, squares)):
            found.append(f"{name}: final {key} differs: sum {actual_total!r} vs {total!r}, squares {actual_squares!r} vs {squares!r}")
    return found


def fixture(name: str) -> dict[str, Any]:
    with open(FIXTURE) as f:
        return json.load(f)[name]


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
    found = differences(name, result, fixture(name))
    assert not found, "\n".join(found[:10])


# Small deliberate changes the guard must see (ComaDmac's defaults: td_lambda 0.8, tau 0.01, RMSprop eps
# 1e-5; DATA: 8 episodes per collect at 0.5 updates each, so 4 updates per collect).
SMALL_CHANGES = {
    "td_lambda 0.8 -> 0.79": ({"td_lambda": 0.79}, None),
    "tau 0.01 -> 0.011": ({"tau": 0.011}, None),
    "RMSprop eps 1e-5 -> 1e-6": ({"rmsprop_eps": 1e-6}, None),
    "one update fewer per collect": ({}, {"updates_per_episode": 0.375}),
}


@pytest.mark.skipif(UPDATE, reason="the fixture is being regenerated")
@pytest.mark.parametrize("change", sorted(SMALL_CHANGES))
def test_the_guard_catches_small_changes(change):
    settings, data = SMALL_CHANGES[change]
    found = differences("ComaDmac", run("ComaDmac", data, **settings), fixture("ComaDmac"))
    assert found, f"{change}: the run still matches the fixture within {RELATIVE_TOLERANCE} relative"
