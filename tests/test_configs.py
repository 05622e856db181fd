"""Every shipped config trains through the CLI and writes the TensorBoard tags it promises."""

import glob
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ALGORITHM_FILES, CONFIGS, SMALL_GAME, compose_and_check, config_args
from dmac_lightning.algorithms import ALGORITHMS
from dmac_lightning.cli import main


def test_there_is_a_config_for_each_of_the_ten_algorithms():
    names = {os.path.basename(path)[:-5] for path in glob.glob(os.path.join(CONFIGS, "algorithms", "*.yaml"))}
    assert names == {"coma", "coma_dmac", "maac", "maac_dmac", "qmix", "qmix_dmac", "dop", "dop_dmac", "fop", "fop_dmac"}
    assert names == set(ALGORITHM_FILES)
    assert len(ALGORITHMS) == 10


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_FILES))
def test_config_trains_and_logs_losses_and_evaluation(algorithm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit", *config_args(algorithm),
            "--data.env_kwargs", json.dumps(SMALL_GAME),
            "--data.batch_size", "8", "--data.warmup_episodes", "0", "--data.max_env_steps", "240", "--data.env_steps_per_epoch", "240",
            "--evaluation.interval", "120", "--evaluation.episodes", "4",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        ]
    )
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "stochastic_game" / "*" / "version_0"))
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    losses = {"loss/critic"} if "/Qmix/" in run_dir else {"loss/critic", "loss/actor"}
    assert losses | {"eval/return", "eval/return_ratio", "train/episode_return"} <= tags, tags
    if "Dmac" in run_dir:
        assert "dmac/kl_pi_rho" in tags
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt"))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_FILES))
def test_every_algorithm_composes_with_every_smax_map(algorithm, tmp_path, monkeypatch):
    pytest.importorskip("jaxmarl")
    monkeypatch.chdir(tmp_path)
    maps = sorted(os.path.basename(path)[:-5] for path in glob.glob(os.path.join(CONFIGS, "smax", "*.yaml")))
    assert maps == ["2s3z", "3m", "3s5z", "3s_vs_3z", "5m_vs_6m", "8m"]
    for map_name in maps:
        compose_and_check("smax", map_name, algorithm)
