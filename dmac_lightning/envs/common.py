"""The key layout every environment produces, so algorithms never see which env they run on.

Keys (batch ``[n_envs]``), the same as TorchRL's SMACv2 wrapper:

* ``("agents", "observation")`` ``[n_agents, obs_dim]`` float
* ``("agents", "action_mask")`` ``[n_agents, n_actions]`` bool
* ``("agents", "action")`` ``[n_agents]`` long
* ``"state"`` ``[state_dim]`` float
* ``"reward"``, ``"done"``, ``"terminated"``, ``"truncated"`` ``[1]``
* optional ``("info", "battle_won")`` ``[1]`` bool
* optional ``("info", "episode_broken")`` ``[1]`` bool (the episode is dropped, never trained on)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchrl.data import Categorical, Composite, Unbounded

AGENTS = "agents"
OBSERVATION = (AGENTS, "observation")
ACTION_MASK = (AGENTS, "action_mask")
ACTION = (AGENTS, "action")
STATE = "state"
BATTLE_WON = ("info", "battle_won")
# Set by an env on the step where it had to restart (e.g. StarCraft II crashed): that episode is dropped.
BROKEN = ("info", "episode_broken")


@dataclass(frozen=True)
class EnvInfo:
    """Sizes an algorithm needs to build its networks."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int
    reports_wins: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def multi_agent_specs(
    info: EnvInfo, batch: int | tuple[int, ...], device: torch.device | str | None, reports_broken: bool = False
) -> dict[str, Composite]:
    """Observation, action, reward and done specs of the shared layout for a batch of envs
    (``n_envs``, or a batch shape such as ``()`` for a single env)."""
    batch = (batch,) if isinstance(batch, int) else tuple(batch)
    agents_batch = (*batch, info.n_agents)
    observation = Composite(
        {
            AGENTS: Composite(
                observation=Unbounded(shape=(*agents_batch, info.obs_dim), device=device),
                action_mask=Categorical(2, shape=(*agents_batch, info.n_actions), dtype=torch.bool, device=device),
                shape=agents_batch,
                device=device,
            ),
            STATE: Unbounded(shape=(*batch, info.state_dim), device=device),
        },
        shape=batch,
        device=device,
    )
    flags = {"battle_won": info.reports_wins, "episode_broken": reports_broken}
    if any(flags.values()):
        observation["info"] = Composite(
            {name: Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device) for name, on in flags.items() if on},
            shape=batch,
            device=device,
        )
    action = Composite(
        {
            AGENTS: Composite(
                action=Categorical(info.n_actions, shape=agents_batch, dtype=torch.long, device=device),
                shape=agents_batch,
                device=device,
            )
        },
        shape=batch,
        device=device,
    )
    flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
    done = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=batch, device=device)
    reward = Unbounded(shape=(*batch, 1), device=device)
    return {"observation_spec": observation, "action_spec": action, "reward_spec": reward, "done_spec": done}
