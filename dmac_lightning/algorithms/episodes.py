"""Named views of a sampled batch of stored episodes, the tensors every update reads."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDictBase

from dmac_lightning.envs.common import ACTION, ACTION_MASK, OBSERVATION, STATE
from dmac_lightning.networks import previous_actions_one_hot
from dmac_lightning.policy import sample


class EpisodeBatch:
    """Views of padded episodes ``[B, L, ...]`` (``L``: the longest episode + 1).

    Slot ``t < T`` holds what was seen at step t, the action taken and the reward and termination
    that followed; slot ``T`` only holds the observation after the last step (the bootstrap state).
    """

    def __init__(self, batch: TensorDictBase, n_actions: int) -> None:
        self.observation = batch.get(OBSERVATION)  # [B, L, n, obs]
        self.available = batch.get(ACTION_MASK)  # [B, L, n, A]
        self.state = batch.get(STATE)  # [B, L, state]
        self.actions = batch.get(ACTION)  # [B, L, n]
        self.reward = batch.get("reward")[..., :-1, 0]  # [B, T]
        self.terminated = batch.get("terminated")[..., :-1, 0].to(self.reward.dtype)  # [B, T]
        self.filled = batch.get("filled")  # [B, L]: an action was taken at t
        self.last_actions = previous_actions_one_hot(self.actions, n_actions)  # [B, L, n, A]

    @property
    def steps(self) -> int:
        """``T``: the decision steps; slot ``T`` only holds the bootstrap observation."""
        return self.reward.shape[1]

    @property
    def decisions(self) -> slice:
        """The slots of decision steps, ``[:, :T]``."""
        return slice(0, self.steps)

    @property
    def step_mask(self) -> torch.Tensor:
        """``[B, T, 1]``: real steps, broadcast over agents."""
        return self.filled[:, :-1, None]

    @property
    def joint_step_mask(self) -> torch.Tensor:
        """``[B, T]``: real steps, for joint quantities (Q_tot, targets)."""
        return self.filled[:, :-1]

    def bootstrap_actions(self, log_pi: torch.Tensor) -> torch.Tensor:
        """``[B, L, n]``: the stored actions where the episode went on, fresh samples from ``pi`` elsewhere
        (the bootstrap slot after a time limit, and padding). Any action is valid there for DMAC's
        critic (Prop. 4); on-policy targets want pi's."""
        return torch.where(self.filled[..., None], self.actions, sample(log_pi))


class FreshAndReplayed(NamedTuple):
    """A batch of the ``"mixed"`` data regime: episodes of the latest collects and replayed ones."""

    fresh: EpisodeBatch
    replay: EpisodeBatch
