"""Evaluation episodes as animations (SMAX) and StarCraft II replays (SMAC): what a policy does, to watch.

An env that can be drawn offers ``snapshot() -> dict`` of numpy arrays per env (``positions [n_envs,
units, 2]``, ``alive``, ``health`` (fraction of full), ``teams`` ``[n_envs, units]``, ``map_size``);
an env whose game records replays offers ``save_replay(directory, prefix)`` (real SMAC).
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable

import numpy as np
import torch
from tensordict import TensorDictBase

from dmac_lightning.envs import env_extra


@torch.no_grad()
def record_episodes(env: Any, policy: Callable[[TensorDictBase], TensorDictBase], episode_limit: int) -> list[list[dict]]:
    """Play one episode in each of ``env``'s envs; per env, its snapshot before every step and after the last."""
    snapshot_of = env_extra(env, "snapshot")
    td = env.reset()
    frames: list[list[dict]] = [[] for _ in range(env.batch_size[0])]
    running = np.ones(env.batch_size[0], dtype=bool)
    for _ in range(episode_limit + 1):
        snapshot = snapshot_of()
        for i in np.flatnonzero(running):
            frames[i].append({key: value[i] if key != "map_size" else value for key, value in snapshot.items()})
        if not running.any():
            break
        td = env.step(policy(td))
        running &= ~td.get(("next", "done")).reshape(-1).cpu().numpy()
        td = env.step_mdp(td) if hasattr(env, "step_mdp") else td["next"]
    return frames


def require_drawing() -> None:
    """Animations need matplotlib (the ``plots`` extra); say how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "evaluation.render_episodes draws with matplotlib, which is not installed: "
            "pip install 'dmac-lightning[plots]' (or pip install matplotlib), or set evaluation.render_episodes 0"
        ) from None


def animation(frames: list[dict], title: str = "", fps: int = 8) -> bytes:
    """An animated GIF of one episode: allies blue, enemies red, marker size by health, the dead gone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    width, height = frames[0]["map_size"]
    images = []
    figure, axis = plt.subplots(figsize=(3.2, 3.2), dpi=80)
    for step, frame in enumerate(frames):
        axis.clear()
        axis.set_xlim(0, width)
        axis.set_ylim(0, height)
        axis.set_xticks([])
        axis.set_yticks([])
        for team, color in ((0, "tab:blue"), (1, "tab:red")):
            shown = frame["alive"] & (frame["teams"] == team)
            axis.scatter(*frame["positions"][shown].T, s=20 + 120 * frame["health"][shown], c=color)
        axis.set_title(f"{title} step {step}", fontsize=8)
        figure.canvas.draw()
        images.append(Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3]))
    plt.close(figure)
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out.getvalue()


def log_animation(logger: Any, tag: str, gif: bytes, step: int) -> None:
    """An animated GIF into TensorBoard's images (what ``add_video`` writes, without needing moviepy)."""
    writer = getattr(logger, "experiment", None)
    if writer is None or not hasattr(writer, "_get_file_writer"):
        return  # not TensorBoard: the file in the run directory is the record
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = Image.open(io.BytesIO(gif)).size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def replay_directory(trainer: Any) -> str:
    """``<run>/replays``. Not ``trainer.log_dir``: that is a collective (a broadcast) under DDP, and
    evaluation runs on rank 0 alone."""
    logger = trainer.logger
    run = getattr(logger, "log_dir", None) or trainer.default_root_dir
    return os.path.join(run, "replays")
