"""Evaluation episodes: unbiased (every env runs exactly one episode per round, no bias to short
episodes), on envs apart from the training envs. The ``Evaluation`` callback schedules them during
training; ``dmac test`` plays them once."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from dmac_lightning.envs import ENVS, env_extra
from dmac_lightning.envs.common import BATTLE_WON, BROKEN
from dmac_lightning.rendering import animation, record_episodes, require_drawing
from dmac_lightning.validation import INF, check_positive_int, check_range


@torch.no_grad()
def evaluate_episodes(
    env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], episodes: int, episode_limit: int
) -> dict[str, float]:
    """Mean return, episode length (and win rate where the env reports wins) over ``episodes`` episodes.

    ``env`` runs ``n`` episodes in parallel per round; each env's first episode counts, unless the env
    marked it broken (a StarCraft II crash): those are replayed in later rounds, not counted as losses.
    """
    n_envs = env.batch_size[0]
    returns, lengths, wins = [], [], []
    reports_wins = getattr(getattr(env, "info", None), "reports_wins", False) or BATTLE_WON in env.observation_spec.keys(True)
    reports_broken = BROKEN in env.observation_spec.keys(True)
    rounds, counted = 0, 0
    while counted < episodes:
        rounds += 1
        if rounds > 2 * math.ceil(episodes / n_envs) + 10:
            raise RuntimeError(f"evaluation: too many broken episodes ({counted} of {episodes} intact)")
        rollout = env.rollout(episode_limit, policy, break_when_any_done=False, trust_policy=True)
        done = rollout.get(("next", "done"))[..., 0]  # [n_envs, T]
        steps = torch.arange(done.shape[1], device=done.device)
        first_done = torch.where(done.any(1), done.float().argmax(1), done.shape[1] - 1)
        in_first = steps[None] <= first_done[:, None]
        intact = slice(None)
        if reports_broken:
            intact = ~rollout.get(("next", *BROKEN))[..., 0].gather(1, first_done[:, None])[:, 0]
        returns.append((rollout.get(("next", "reward"))[..., 0] * in_first).sum(1)[intact])
        lengths.append((first_done + 1)[intact])
        counted += len(lengths[-1])
        if reports_wins:
            won = rollout.get(("next", *BATTLE_WON))[..., 0]
            wins.append(won.gather(1, first_done[:, None])[:, 0][intact])
    metrics = {
        "return": torch.cat(returns)[:episodes].float().mean().item(),
        "episode_length": torch.cat(lengths)[:episodes].float().mean().item(),
    }
    if reports_wins:
        metrics["win_rate"] = torch.cat(wins)[:episodes].float().mean().item()
    optimum = env_extra(env, "optimal_return")
    if optimum:
        metrics["return_ratio"] = metrics["return"] / optimum
    return metrics


class Evaluator:
    """Plays evaluation episodes with a module's current policy, on envs of its own.

    Args:
        episodes: episodes per evaluation.
        n_envs: envs stepped in parallel (default: ``episodes``, one round).
        greedy: greedy actions instead of sampling; ``None`` uses the algorithm's published choice.
        seed_offset: evaluation envs are seeded ``seed + seed_offset`` (apart from training envs).
        render_episodes: also record this many episodes to watch (0: none): animated GIFs where the env
            can be drawn (SMAX), StarCraft II replays of the evaluation games where it records them (SMAC).
    """

    def __init__(
        self, episodes: int = 20, n_envs: int | None = None, greedy: bool | None = None, seed_offset: int = 1_000_000,
        render_episodes: int = 0,
    ) -> None:
        check_positive_int("evaluation.episodes", episodes)
        if n_envs is not None:
            check_positive_int("evaluation.n_envs", n_envs)
        check_range("evaluation.render_episodes", render_episodes, 0, INF)
        self.episodes, self.n_envs = episodes, n_envs or episodes
        self.greedy, self.seed_offset, self.render_episodes = greedy, seed_offset, render_episodes
        self._env: EnvBase | None = None
        self._restored_env_state: dict[str, torch.Tensor] | None = None
        self._warned_undrawable = False

    def greedy_for(self, module: Any) -> bool:
        """Whether this evaluator plays greedily: its ``greedy`` setting, else the algorithm's published protocol."""
        return module.greedy_evaluation if self.greedy is None else self.greedy

    def policy(self, module: Any, greedy: bool | None = None) -> Callable[[TensorDictBase], TensorDictBase]:
        greedy = self.greedy_for(module) if greedy is None else greedy
        return module.policy("greedy" if greedy else "sample")

    def env(self, datamodule: Any) -> EnvBase:
        if self._env is None:
            self._env = datamodule.wrap_env(datamodule.make_env(self.n_envs, datamodule.seed + self.seed_offset))
            if self._restored_env_state is not None:
                env_extra(self._env, "load_checkpoint_state")(self._restored_env_state)
                self._restored_env_state = None
        return self._env

    def env_state(self) -> dict[str, torch.Tensor] | None:
        """Where the evaluation envs' random streams stand, for a checkpoint: a resumed run's next evaluation then
        plays the episodes (SMAX: the battles) the run would have met had it never stopped, not its first
        evaluation's again. ``None`` before the first evaluation, or where the env cannot save its state (SMAC)."""
        if self._env is None:
            return self._restored_env_state
        save = env_extra(self._env, "checkpoint_state")
        return save() if save is not None else None

    def load_env_state(self, state: dict[str, torch.Tensor] | None) -> None:
        """Put back :meth:`env_state`'s state; the envs take it when they are made (at the next evaluation)."""
        if state is None:
            return
        if self._env is None:
            self._restored_env_state = state
        else:
            env_extra(self._env, "load_checkpoint_state")(state)

    def run(self, module: Any, datamodule: Any, greedy: bool | None = None) -> dict[str, float]:
        """Mean return, episode length (and win rate, return ratio where the env knows them), greedy or
        sampled as ``greedy`` says (default: :meth:`greedy_for`)."""
        env = self.env(datamodule)
        was_training = module.training
        module.eval()
        try:
            return evaluate_episodes(env, self.policy(module, greedy), self.episodes, datamodule.env_info.episode_limit)
        finally:
            module.train(was_training)

    def run_both(self, module: Any, datamodule: Any) -> dict[str, dict[str, float]]:
        """The same evaluation under both protocols: ``{"greedy": metrics, "sampled": metrics}``.

        The evaluator's own protocol (:meth:`greedy_for`) plays first, exactly as :meth:`run` would. The other
        then replays the same episodes, with torch's random streams forked so that it draws nothing from the
        streams training uses. Where the eval env can save its random state (``checkpoint_state``: the
        stochastic game, SMAX) it is put back to where the first protocol started before the second, and to
        where the first ended after it, so every later evaluation is what it was with one protocol.
        StarCraft II cannot save its state: on SMAC the second protocol meets other battles, and later
        evaluations follow on from them.
        """
        env = self.env(datamodule)
        save, load = env_extra(env, "checkpoint_state"), env_extra(env, "load_checkpoint_state")
        start = save() if save is not None else None
        first = self.greedy_for(module)
        metrics = {first: self.run(module, datamodule, first)}
        end = save() if save is not None else None
        devices = [module.device] if getattr(module, "device", torch.device("cpu")).type == "cuda" else []
        try:
            if start is not None:
                load(start)
            with torch.random.fork_rng(devices=devices):
                metrics[not first] = self.run(module, datamodule, not first)
        finally:
            if end is not None:
                load(end)
        return {"greedy": metrics[True], "sampled": metrics[False]}

    @staticmethod
    def drawable(datamodule: Any) -> bool:
        """Whether the data module's env can be drawn (offers ``snapshot``), known from its class."""
        entry = ENVS.get(getattr(datamodule, "env_name", None))
        return entry is not None and hasattr(entry.factory, "snapshot")

    def record(self, module: Any, datamodule: Any, directory: str, prefix: str) -> dict[str, bytes]:
        """``render_episodes`` episodes to watch, written under ``directory``: ``{file name: GIF bytes}``
        for drawable envs (the GIFs), ``{}`` after StarCraft II saved its replays of the evaluation games."""
        if not self.render_episodes:
            return {}
        os.makedirs(directory, exist_ok=True)
        save_replay = env_extra(self._env, "save_replay") if self._env is not None else None
        if save_replay is not None:
            save_replay(directory, prefix)
            return {}
        if not self.drawable(datamodule):
            if not self._warned_undrawable:
                self._warned_undrawable = True
                warnings.warn(f"evaluation.render_episodes: {datamodule.env_name} cannot be drawn; nothing is recorded")
            return {}
        require_drawing()
        env = datamodule.wrap_env(datamodule.make_env(self.render_episodes, datamodule.seed + self.seed_offset + 1))
        try:
            was_training = module.training
            module.eval()
            try:
                episodes = record_episodes(env, self.policy(module), datamodule.env_info.episode_limit)
            finally:
                module.train(was_training)
        finally:
            env.close()
        gifs = {f"{prefix}_{k}.gif": animation(frames, f"{prefix} {k}") for k, frames in enumerate(episodes)}
        for name, gif in gifs.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(gif)
        return gifs

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
