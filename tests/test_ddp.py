"""Real multi-process DDP runs on CPU (gloo): identical weights, different data, global accounting."""

import json
import os
import subprocess

import pytest
import torch

from conftest import ROOT, SMALL_GAME, config_args, dmac_command

pytestmark = pytest.mark.slow


def fit(cwd, algorithm: str, *args: str, devices: int = 2, dump: str | None = None) -> subprocess.CompletedProcess:
    extra = []
    if dump is not None:
        callback = {"class_path": "ddp_probe.RankStateDump", "init_args": {"directory": dump}}
        extra = ["--trainer.callbacks+", json.dumps(callback)]
    command = dmac_command(
        "fit", *config_args(algorithm),
        "--data.env_kwargs", json.dumps(SMALL_GAME),
        "--data.batch_size", "8", "--data.env_steps_per_epoch", "400",
        "--evaluation.interval", "400", "--evaluation.episodes", "4",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.enable_progress_bar", "false",
        *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        *extra, *args,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def checkpoint(cwd, algorithm: str) -> dict:
    path = os.path.join(cwd, "lightning_logs", "stochastic_game", algorithm, "version_0", "checkpoints", "last.ckpt")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("config, algorithm", [("coma_dmac", "ComaDmac"), ("qmix_dmac", "QmixDmac")])
def test_two_rank_ddp_run_keeps_ranks_identical_and_counts_globally(tmp_path, config, algorithm):
    dump = str(tmp_path / "dump")
    fit(tmp_path, config, "--data.max_env_steps", "1200", dump=dump)
    ranks = [torch.load(os.path.join(dump, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    assert all(rank["world_size"] == 2 for rank in ranks)

    # policy, rho and critic(s) are bit-identical across ranks, and equal to the checkpoint
    saved = checkpoint(tmp_path, algorithm)
    names = ranks[0]["state_dict"].keys()
    assert any(n.startswith("actor.") for n in names) and any(n.startswith("target_actor.") for n in names)
    for name in names:
        assert torch.equal(ranks[0]["state_dict"][name], ranks[1]["state_dict"][name]), name
        assert torch.equal(ranks[0]["state_dict"][name], saved["state_dict"][name].cpu()), name

    # evaluation ran once, on rank 0 (and the others did not wait for it in a collective)
    assert [rank["evaluated"] for rank in ranks] == [True, False]

    # ranks are seeded differently and collected different episodes
    assert not torch.equal(ranks[0]["first_episode_actions"], ranks[1]["first_episode_actions"])

    # the global env-step counter is the sum of the ranks' own
    assert ranks[0]["global_env_steps"] == ranks[1]["global_env_steps"] == saved["EpisodeDataModule"]["env_steps"]
    assert saved["EpisodeDataModule"]["env_steps"] == ranks[0]["local_env_steps"] + ranks[1]["local_env_steps"]
    assert saved["EpisodeDataModule"]["env_steps"] >= 1200


def test_resume_a_two_rank_checkpoint_on_one_rank_and_back_on_two(tmp_path):
    fit(tmp_path, "coma_dmac", "--data.max_env_steps", "800")
    before = checkpoint(tmp_path, "ComaDmac")["EpisodeDataModule"]["env_steps"]
    assert before >= 800
    fit(tmp_path, "coma_dmac", "--data.max_env_steps", "1600", "--ckpt_path", "last", devices=1)
    after = checkpoint(tmp_path, "ComaDmac")
    assert after["EpisodeDataModule"]["env_steps"] >= 1600
    assert after["EpisodeDataModule"]["world_size"] == 1
    fit(tmp_path, "coma_dmac", "--data.max_env_steps", "2400", "--ckpt_path", "last", devices=2)
    again = checkpoint(tmp_path, "ComaDmac")
    assert again["EpisodeDataModule"]["env_steps"] >= 2400 and again["EpisodeDataModule"]["world_size"] == 2
    assert again["EpisodeDataModule"]["episodes"] > after["EpisodeDataModule"]["episodes"]


def test_cover_rate_counts_the_pairs_any_rank_visited(tmp_path):
    import torch.multiprocessing as mp

    from ddp_probe import cover_union_worker

    mp.spawn(cover_union_worker, args=(str(tmp_path / "init"), SMALL_GAME, 6, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"cover{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["own"].any() and not ranks[1]["own"].any()  # only rank 0 played
    for rank in ranks:
        assert torch.equal(rank["after"], ranks[0]["own"])  # every rank now holds the union
        assert rank["rate"] == ranks[0]["own"].float().mean().item()
