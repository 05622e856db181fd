"""Complete episodes from a collector's stream of steps, in the stored layout.

A stored episode is a TensorDict of batch ``[episode_limit + 1]`` (time): step ``t`` holds the
observation, action mask and state seen at ``t``, the action taken, and the reward and termination
that followed. The extra last slot holds the observation after the final step (the bootstrap state).
``filled`` marks the steps where an action was taken; padding has zero observations and all actions
available (so masked softmaxes stay finite).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from dmac_lightning.envs.common import ACTION, ACTION_MASK, BATTLE_WON, BROKEN, OBSERVATION, STATE

# Stored per step: what was seen (also the bootstrap slot after the last step), what was done, what followed.
_SEEN = {OBSERVATION: OBSERVATION, ACTION_MASK: ACTION_MASK, STATE: STATE}
_DONE_AND_FOLLOWED = {ACTION: ACTION, "reward": ("next", "reward"), "terminated": ("next", "terminated")}


class EpisodeAssembler:
    """Cuts the collector's stream of steps into complete episodes in the stored layout.

    Each env's episode in progress lives in ``pending`` (per key ``[n_envs, episode_limit + 1, ...]``);
    a collected step is written into it for all envs at once, and an episode that ends moves to a
    first-in-first-out queue, in the order episodes end and, among those ending together, the order
    they started (TorchRL's trajectory order). An episode its env marked broken
    (``("info", "episode_broken")``, e.g. after a StarCraft II crash) is dropped when it ends.
    """

    def __init__(self, episode_limit: int) -> None:
        self.episode_limit = episode_limit
        self.pending: dict[Any, torch.Tensor] = {}
        self.queue: list[dict[Any, torch.Tensor]] = []
        self.queued = 0
        self.dropped = 0
        self._steps = 0

    def add(self, frames: TensorDictBase) -> None:
        """Steps ``[n_envs, T]`` as the collector yields them (``T`` consecutive steps of every env)."""
        sources = {**_SEEN, **_DONE_AND_FOLLOWED}
        if ("next", *BATTLE_WON) in frames.keys(include_nested=True):
            sources["battle_won"] = ("next", *BATTLE_WON)
        step_values = {name: frames.get(key) for name, key in sources.items()}
        if "battle_won" in step_values:
            step_values["battle_won"] = step_values["battle_won"][..., 0]  # stored [L + 1], no trailing dim
        next_seen = {name: frames.get(("next", *_as_tuple(key))) for name, key in _SEEN.items()}
        done = frames.get(("next", "done"))[..., 0]
        broken = frames.get(("next", *BROKEN))[..., 0] if ("next", *BROKEN) in frames.keys(include_nested=True) else None
        if not self.pending:
            self._allocate(step_values, done)
        for t in range(done.shape[1]):
            self._add_step(
                {name: value[:, t] for name, value in step_values.items()},
                {name: value[:, t] for name, value in next_seen.items()},
                done[:, t],
                None if broken is None else broken[:, t],
            )

    def _allocate(self, step_values: dict[Any, torch.Tensor], done: torch.Tensor) -> None:
        n_envs, device = done.shape[0], done.device
        for name, value in step_values.items():
            shape = (n_envs, self.episode_limit + 1, *value.shape[2:])
            self.pending[name] = torch.full(shape, name == ACTION_MASK, dtype=value.dtype, device=device)
        self.pending["filled"] = torch.zeros(n_envs, self.episode_limit + 1, dtype=torch.bool, device=device)
        self._length = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._started = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._envs = torch.arange(n_envs, device=device)

    def _add_step(self, values: dict, next_seen: dict, done: torch.Tensor, broken: torch.Tensor | None) -> None:
        position = self._length
        if bool((position >= self.episode_limit).any()):
            raise RuntimeError(f"an episode lasted longer than the env's episode_limit {self.episode_limit}")
        for name, value in values.items():
            self.pending[name][self._envs, position] = value.reshape(self.pending[name][:, 0].shape)
        self.pending["filled"][self._envs, position] = True
        self._steps += 1
        ended = done.nonzero().squeeze(-1)
        if ended.numel():
            for name, value in next_seen.items():  # the bootstrap observation after the last step
                self.pending[name][ended, position[ended] + 1] = value[ended]
            ended = ended[torch.argsort(self._started[ended], stable=True)]
            episodes = {name: stored[ended] for name, stored in self.pending.items()}
            if broken is not None:
                intact = ~broken[ended]
                episodes = {name: value[intact] for name, value in episodes.items()}
                self.dropped += ended.numel() - episodes["filled"].shape[0]
            self.queue.append(episodes)
            self.queued += episodes["filled"].shape[0]
            for name, stored in self.pending.items():
                stored[ended] = name == ACTION_MASK
            self._started[ended] = self._steps
        self._length = torch.where(done, 0, position + 1)

    def pop(self, count: int) -> TensorDict:
        """The ``count`` oldest complete episodes, a TensorDict ``[count, episode_limit + 1]``."""
        merged = {name: torch.cat([episodes[name] for episodes in self.queue]) for name in self.pending}
        self.queue = [{name: value[count:] for name, value in merged.items()}]
        self.queued -= count
        out = TensorDict({}, batch_size=(count, self.episode_limit + 1), device=merged["filled"].device)
        for name, value in merged.items():
            out.set(name, value[:count])
        return out


def _as_tuple(key: str | tuple) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def trim_to_longest(batch: TensorDictBase) -> TensorDictBase:
    """Cut the padded time dimension of ``[B, L]`` episodes after the longest one's bootstrap slot:
    short episodes padded to a long limit (SMAC's 100+) would otherwise cost most of an update."""
    longest = int(batch.get("filled").sum(-1).max())
    return batch[:, : longest + 1]
