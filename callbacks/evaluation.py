"""Periodic evaluation every ``interval`` env steps over ``episodes`` episodes (paper App. C.3), and
``checkpoints/best.ckpt``: the policy with the best evaluation so far."""

from __future__ import annotations

import math
import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from dmac_lightning import lockstep
from dmac_lightning.evaluation import Evaluator
from dmac_lightning.loggers import log_metrics
from dmac_lightning.rendering import log_animation, replay_directory, require_drawing
from dmac_lightning.validation import check_positive_int

BEST_FILENAME = "best.ckpt"


class Evaluation(pl.Callback):
    """Evaluate the current policy on a separate env, on rank 0 only, and log ``eval/*``.

    Logged (x-axis env steps): ``eval/return``, ``eval/episode_length``, ``eval/win_rate`` where the
    env reports wins, ``eval/return_ratio`` (return / exact optimum) where the env knows its optimum, all
    under the algorithm's published protocol (greedy for QMIX and FOP, sampled for the others and every
    +DMAC variant) or the one ``greedy`` sets. With ``both_protocols`` (the default) every evaluation also
    plays the same episodes under both protocols and logs them as ``eval_greedy/*`` and ``eval_sampled/*``,
    so that algorithms published with different protocols can be compared under one; the second protocol
    draws nothing from training's random streams (see ``Evaluator.run_both``). ``dmac test`` plays the same
    settings' episodes once, under one protocol.

    After each evaluation that beats every earlier one of the run (``eval/win_rate`` where the env reports
    wins, ``eval/return`` otherwise; greater is better, the first of equals kept), the evaluated policy is
    written to ``checkpoints/best.ckpt`` beside ``last.ckpt``: weights and counters, without the optimiser
    state and the replay buffer (it is for ``dmac test --ckpt_path best``; a resume takes ``last``).

    Args:
        interval: evaluate whenever this many more env steps (summed over ranks) were collected.
        episodes: episodes per evaluation.
        n_envs: envs stepped in parallel during evaluation (default: ``episodes``, one round).
        greedy: greedy actions instead of sampling; ``None`` uses the algorithm's published choice.
        at_start: also evaluate the initial policy.
        seed_offset: evaluation envs are seeded ``seed + seed_offset`` (apart from training envs).
        render_episodes: with every evaluation, also record this many episodes to watch, into the run's
            ``replays/`` directory: animated GIFs on SMAX (also in TensorBoard's images, ``eval/replay_<k>``),
            StarCraft II replays of the evaluation games on SMAC.
        both_protocols: also log every evaluation under both protocols (``eval_greedy/*``, ``eval_sampled/*``);
            it doubles the evaluation's cost.
    """

    def __init__(
        self,
        interval: int = 10_000,
        episodes: int = 20,
        n_envs: int | None = None,
        greedy: bool | None = None,
        at_start: bool = True,
        seed_offset: int = 1_000_000,
        render_episodes: int = 0,
        both_protocols: bool = True,
    ) -> None:
        check_positive_int("evaluation.interval", interval)
        self.both_protocols = both_protocols
        self.evaluator = Evaluator(episodes, n_envs, greedy, seed_offset, render_episodes)
        self.interval, self.at_start = interval, at_start
        self.next_at = 0
        self.last: dict[str, float] = {}
        self.best: dict[str, float] = {}  # the best evaluation so far: metric, value, env_steps
        self.resumed_env_state: dict[str, Any] | None = None

    @property
    def episodes(self) -> int:
        return self.evaluator.episodes

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.evaluator = self.evaluator  # what `dmac test` plays
        if self.evaluator.render_episodes and self.evaluator.drawable(trainer.datamodule):
            require_drawing()  # before training, not at the first evaluation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluator.load_env_state(self.resumed_env_state)
        steps = trainer.datamodule.env_steps
        self.next_at = steps if (self.at_start and steps == 0) else (steps // self.interval + 1) * self.interval
        if steps == 0 and self.at_start:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.datamodule.env_steps >= self.next_at:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last.get("env_steps") != trainer.datamodule.env_steps:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        steps = trainer.datamodule.env_steps
        self.next_at = (steps // self.interval + 1) * self.interval
        raise_if_diverged = getattr(pl_module, "raise_if_diverged", None)
        if raise_if_diverged is not None:
            raise_if_diverged()  # a policy with NaN weights cannot be evaluated; on every rank, so all stop together
        if not trainer.is_global_zero:
            return {}
        if self.both_protocols:
            by_protocol = self.evaluator.run_both(pl_module, trainer.datamodule)
            metrics = by_protocol["greedy" if self.evaluator.greedy_for(pl_module) else "sampled"]
            logged = {f"eval_{protocol}/{k}": v for protocol, values in by_protocol.items() for k, v in values.items()}
        else:
            metrics, logged = self.evaluator.run(pl_module, trainer.datamodule), {}
        self.last = {"env_steps": steps, **metrics}
        log_metrics(trainer, {**{f"eval/{k}": v for k, v in metrics.items()}, **logged}, step=steps)
        self.keep_if_best(trainer, metrics, steps)
        record(trainer, pl_module, self.evaluator, f"eval_{steps}", tag="eval", step=steps)
        rank_zero_info(f"{lockstep.message_prefix()}eval @ {steps} env steps: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def keep_if_best(self, trainer: pl.Trainer, metrics: dict[str, float], steps: int) -> None:
        """Write ``best.ckpt`` (rank 0) if this evaluation beats every earlier one of the run."""
        metric = "win_rate" if "win_rate" in metrics else "return"
        value = metrics[metric]
        if not math.isfinite(value) or (self.best and value <= self.best["value"]):
            return
        directory = getattr(trainer.checkpoint_callback, "dirpath", None)
        if directory is None:  # checkpointing is off
            return
        self.best = {"metric": f"eval/{metric}", "value": value, "env_steps": steps}
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        checkpoint.get(type(trainer.datamodule).__qualname__, {}).pop("buffer", None)
        checkpoint["best"] = dict(self.best)
        os.makedirs(directory, exist_ok=True)
        # Rank 0 alone, without Trainer.save_checkpoint's barrier: only rank 0 evaluates.
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, os.path.join(directory, BEST_FILENAME))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best": dict(self.best)}
        env_state = self.evaluator.env_state()
        if env_state is not None:
            state["env_state"] = env_state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))
        # Put back at on_train_start, so that a resumed fit evaluates on where its episodes had got to while
        # ``dmac test --ckpt_path`` keeps playing the test settings' own episodes. Checkpoints from before the
        # state was saved lack it: their next evaluation replays the first one's episodes, as such resumes did.
        self.resumed_env_state = state_dict.get("env_state")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluator.close()


def record(trainer: pl.Trainer, pl_module: pl.LightningModule, evaluator: Evaluator, prefix: str, tag: str, step: int) -> None:
    """The evaluator's episodes to watch, into ``<run>/replays/<prefix>_*`` and TensorBoard's images
    (``<tag>/replay_<k>``)."""
    if not evaluator.render_episodes:
        return
    gifs = evaluator.record(pl_module, trainer.datamodule, replay_directory(trainer), prefix)
    for k, gif in enumerate(gifs.values()):
        for logger in trainer.loggers:
            log_animation(logger, f"{tag}/replay_{k}", gif, step)
