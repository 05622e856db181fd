"""Both evaluation protocols: the same episodes under greedy and sampled actions, logged beside the
published protocol, without touching the published numbers or training's random streams."""

import glob
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_GAME, config_args
from datamodules import EpisodeDataModule
from dmac_lightning.algorithms import ComaDmac, Fop
from dmac_lightning.cli import main
from dmac_lightning.evaluation import Evaluator

GAME = {"n_states": 6, "n_agents": 2, "n_actions": 3, "episode_limit": 5, "game_seed": 1}


def connected(module):
    data = EpisodeDataModule(env="stochastic_game", env_kwargs=GAME, n_envs=2, episodes_per_collect=2, batch_size=2, seed=3)
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    return data


def make_deterministic(module: ComaDmac) -> None:
    """A policy that picks action 0 with probability 1 - 2e-26: sampling it is greedy play."""
    with torch.no_grad():
        for parameter in module.actor.head.parameters():
            parameter.zero_()
        module.actor.head.bias[0] = 30.0


def test_both_protocols_play_the_same_episodes():
    module = ComaDmac()
    data = connected(module)
    make_deterministic(module)
    evaluator = Evaluator(episodes=12, n_envs=4)
    both = evaluator.run_both(module, data)
    # a deterministic policy on the same episodes: the two protocols cannot differ
    assert both["greedy"] == both["sampled"]
    # whereas two runs in a row meet other episodes (the game's starts and transitions are random)
    assert evaluator.run(module, data) != evaluator.run(module, data)


def test_the_published_protocol_and_what_follows_are_as_with_one_protocol():
    # FOP is published greedy (its extra protocol samples its stochastic policy); COMA+DMAC sampled. (QMIX acts
    # greedily in both modes: it has no policy to sample.)
    for module_class in (Fop, ComaDmac):
        results = []
        for both in (False, True):
            torch.manual_seed(0)
            module = module_class()
            data = connected(module)
            evaluator = Evaluator(episodes=8, n_envs=4)
            published = "greedy" if module.greedy_evaluation else "sampled"
            first = evaluator.run_both(module, data)[published] if both else evaluator.run(module, data)
            # what happens next (another evaluation, training's draws) is the same with or without the extra protocol
            results.append((first, evaluator.run(module, data), torch.rand(3)))
        single, double = results
        assert single[0] == double[0] and single[1] == double[1]
        assert torch.equal(single[2], double[2]), module_class.__name__


def event_values(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    values: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            values.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return values


FAST = [
    "--data.env_kwargs", json.dumps(SMALL_GAME), "--data.batch_size", "8", "--data.max_env_steps", "600",
    "--data.env_steps_per_epoch", "200", "--evaluation.interval", "300", "--evaluation.episodes", "4",
    "--trainer.enable_progress_bar", "false",
]


@pytest.mark.parametrize("name", ["fop", "coma_dmac"])
def test_fit_logs_both_protocols_and_trains_as_with_one(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for both in ("true", "false"):
        main(["fit", *config_args(name), *FAST, "--evaluation.both_protocols", both, "--trainer.default_root_dir", f"run_{both}"])
        (run_dir,) = glob.glob(f"run_{both}/lightning_logs/*/*/version_0")
        runs[both] = run_dir
    logged, single = event_values(runs["true"]), event_values(runs["false"])
    published = "eval_greedy" if name == "fop" else "eval_sampled"
    for key in ("return", "episode_length", "return_ratio"):
        # the published protocol's numbers are eval/*, as with one protocol
        assert logged[f"{published}/{key}"] == logged[f"eval/{key}"] == single[f"eval/{key}"]
        other = "eval_sampled" if published == "eval_greedy" else "eval_greedy"
        assert [s for s, _ in logged[f"{other}/{key}"]] == [s for s, _ in logged[f"eval/{key}"]]
    assert not any(tag.startswith(("eval_greedy", "eval_sampled")) for tag in single)
    # training drew the same random numbers: the same losses at every step and the same final weights
    assert logged["loss/critic"] == single["loss/critic"]
    first, second = (torch.load(os.path.join(runs[b], "checkpoints", "last.ckpt"), weights_only=True)["state_dict"] for b in ("true", "false"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_evaluation_envs_state_carries_a_resumed_run_on_to_the_episodes_it_would_have_met():
    # Without it a resumed run's next evaluation replayed its first evaluation's episodes (on SMAX its first
    # battles), so its numbers depended on where it had been stopped, and a script replayed on an evaluation's
    # battles (docs/results/as_published/scripted_reference.py) met other ones.
    module = ComaDmac()
    data = connected(module)
    make_deterministic(module)  # the policy draws nothing: only the envs' own random streams decide the episodes
    never_stopped = Evaluator(episodes=6, n_envs=3)
    first = never_stopped.run(module, data)
    assert never_stopped.env_state() is not None
    second_state = never_stopped.env_state()
    second = never_stopped.run(module, data)
    third = never_stopped.run(module, data)
    assert len({json.dumps(first), json.dumps(second), json.dumps(third)}) == 3  # the episodes move on

    resumed = Evaluator(episodes=6, n_envs=3)
    assert resumed.env_state() is None  # nothing to save before the first evaluation
    resumed.load_env_state(second_state)  # before its envs exist, as at a resume
    assert torch.equal(resumed.env_state()["rng"], second_state["rng"])  # a checkpoint before its first evaluation keeps it
    assert resumed.run(module, data) == second and resumed.run(module, data) == third
    assert Evaluator(episodes=6, n_envs=3).run(module, data) == first  # what every resume used to play


def test_a_fit_checkpoint_holds_the_evaluation_envs_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *config_args("coma_dmac"), *FAST])
    (path,) = glob.glob("lightning_logs/*/*/version_0/checkpoints/last.ckpt")
    (state,) = [s for key, s in torch.load(path, weights_only=True)["callbacks"].items() if key.startswith("Evaluation")]
    assert state["best"]["metric"] == "eval/return" and torch.is_tensor(state["env_state"]["rng"])
