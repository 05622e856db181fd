"""The paper's randomly generated cooperative stochastic game (Sec. 5.1), batched in pure torch.

Generation, from ``game_seed`` (independent of the seed that drives the rollouts):

* **Rewards.** Every (state, joint action) pair pays a small dense reward ``U(0, dense_reward)``.
  In a ``bonus_fraction`` of the states, one joint action drawn uniformly pays ``bonus_reward``
  instead. Finding those sparse joint actions needs all agents to coordinate on an action
  combination the uniform policy tries with probability ``1 / n_actions ** n_agents``: exploration
  matters.
* **Transitions.** ``P(. | s, a)`` is drawn per (state, joint action) from a symmetric Dirichlet
  with concentration ``transition_concentration`` (small values make transitions near
  deterministic), so reaching and staying in bonus states is a planning problem too.
* **Episodes** start in a uniformly random state and last exactly ``episode_limit`` steps. The
  horizon is part of the game (agents observe the timestep and the optimum is finite-horizon), so
  the last step is *terminated*, not truncated.

Every agent observes the one-hot state concatenated with the one-hot timestep; the global state is
the same vector. The exact optimum (``optimal_return``) is finite-horizon dynamic programming over
states x joint actions; ``cover_rate`` is the fraction of (state, joint action) pairs visited.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from dmac_lightning.envs.common import ACTION, STATE, EnvInfo, multi_agent_specs
from dmac_lightning.validation import INF, check_positive_int, check_range


def generate_game(
    n_states: int,
    n_agents: int,
    n_actions: int,
    game_seed: int,
    dense_reward: float = 0.1,
    bonus_reward: float = 1.0,
    bonus_fraction: float = 0.5,
    transition_concentration: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward ``[S, A]`` and transition ``[S, A, S]`` tensors over joint actions ``A = n_actions**n_agents``."""
    rng = np.random.default_rng(game_seed)
    n_joint = n_actions**n_agents
    rewards = dense_reward * rng.random((n_states, n_joint))
    n_bonus_states = max(1, round(bonus_fraction * n_states)) if bonus_fraction > 0 else 0
    bonus_states = rng.permutation(n_states)[:n_bonus_states]
    rewards[bonus_states, rng.integers(n_joint, size=n_bonus_states)] = bonus_reward
    transitions = rng.dirichlet(np.full(n_states, transition_concentration), size=(n_states, n_joint))
    return torch.from_numpy(rewards), torch.from_numpy(transitions)


def optimal_values(rewards: torch.Tensor, transitions: torch.Tensor, horizon: int) -> torch.Tensor:
    """Finite-horizon optimal values ``V[t, s]`` for ``t = 0..horizon`` (``V[horizon] = 0``)."""
    values = torch.zeros(horizon + 1, rewards.shape[0], dtype=rewards.dtype)
    for t in range(horizon - 1, -1, -1):
        q = rewards + transitions @ values[t + 1]
        values[t] = q.max(dim=-1).values
    return values


class StochasticGameEnv(EnvBase):
    """``n_envs`` copies of one random stochastic game, stepped together on any device."""

    def __init__(
        self,
        n_envs: int = 1,
        n_states: int = 30,
        n_agents: int = 3,
        n_actions: int = 5,
        episode_limit: int = 30,
        game_seed: int = 0,
        dense_reward: float = 0.1,
        bonus_reward: float = 1.0,
        bonus_fraction: float = 0.5,
        transition_concentration: float = 0.5,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.check_config(
            dict(
                n_envs=n_envs, n_states=n_states, n_agents=n_agents, n_actions=n_actions,
                episode_limit=episode_limit, bonus_fraction=bonus_fraction,
                transition_concentration=transition_concentration,
            )
        )
        device = torch.device(device or "cpu")
        super().__init__(device=device, batch_size=torch.Size([n_envs]))
        self.n_states, self.n_agents, self.n_actions = n_states, n_agents, n_actions
        self.episode_limit = episode_limit
        self.info = EnvInfo(
            n_agents=n_agents,
            n_actions=n_actions,
            obs_dim=n_states + episode_limit,
            state_dim=n_states + episode_limit,
            episode_limit=episode_limit,
        )
        rewards, transitions = generate_game(
            n_states, n_agents, n_actions, game_seed, dense_reward, bonus_reward, bonus_fraction,
            transition_concentration,
        )
        self._values = optimal_values(rewards, transitions, episode_limit)
        self.rewards = rewards.to(torch.get_default_dtype()).to(device)
        self.transitions = transitions.to(torch.get_default_dtype()).to(device)
        # Agent i's action is digit i (most significant first) of the joint action in base n_actions.
        self._place_values = (n_actions ** torch.arange(n_agents - 1, -1, -1)).to(device)
        self._visited = torch.zeros(n_states, n_actions**n_agents, dtype=torch.bool, device=device)
        self._state = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._time = torch.zeros(n_envs, dtype=torch.long, device=device)
        self._rng = torch.Generator(device=device)
        self._rng.manual_seed(0 if seed is None else seed)
        for key, spec in multi_agent_specs(self.info, n_envs, device).items():
            setattr(self, key, spec)

    @staticmethod
    def check_config(config: dict) -> None:
        """Raise a ``ValueError`` naming the first invalid field of a (partial) configuration."""
        for name in ("n_envs", "n_states", "n_agents", "n_actions", "episode_limit"):
            check_positive_int(f"data.env_kwargs.{name}", config.get(name, 1))
        n_joint = config.get("n_actions", 5) ** config.get("n_agents", 3)
        if n_joint > 1_000_000:
            raise ValueError(
                f"stochastic_game: n_actions ** n_agents = {n_joint} joint actions is too many for the exact "
                "tabular game (at most 1,000,000)"
            )
        check_range("data.env_kwargs.bonus_fraction", config.get("bonus_fraction", 0.5), 0.0, 1.0)
        check_range("data.env_kwargs.transition_concentration", config.get("transition_concentration", 0.5), 0.0, INF, low_open=True)

    # -- what the game knows about itself ---------------------------------------------------------
    @property
    def optimal_return(self) -> float:
        """Exact optimal expected (undiscounted) episode return from the uniform initial state."""
        return self._values[0].mean().item()

    @property
    def cover_rate(self) -> float:
        """Visited (state, joint action) pairs over all pairs, since construction or the last reset."""
        return self._visited.float().mean().item()

    def reset_cover(self) -> None:
        self._visited.zero_()

    def train_metrics(self) -> dict[str, float]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under DDP every rank plays the same game: the cover rate counts the pairs any rank visited
            # (and every rank keeps that union, so a checkpoint from rank 0 holds it).
            union = self._visited.to(torch.uint8)
            torch.distributed.all_reduce(union, op=torch.distributed.ReduceOp.MAX)
            self._visited.copy_(union.bool())
        return {"cover_rate": self.cover_rate}

    def joint_action_index(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions * self._place_values).sum(-1)

    # -- EnvBase ----------------------------------------------------------------------------------
    def _observe(self) -> TensorDict:
        features = torch.cat(
            [
                torch.nn.functional.one_hot(self._state, self.n_states),
                torch.nn.functional.one_hot(self._time.clamp(max=self.episode_limit - 1), self.episode_limit),
            ],
            dim=-1,
        ).to(self.rewards.dtype)
        n_envs = self.batch_size[0]
        agents = TensorDict(
            {
                "observation": features.unsqueeze(1).expand(n_envs, self.n_agents, -1),
                "action_mask": torch.ones(
                    n_envs, self.n_agents, self.n_actions, dtype=torch.bool, device=self.device
                ),
            },
            batch_size=(n_envs, self.n_agents),
        )
        return TensorDict({"agents": agents, STATE: features}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        n_envs = self.batch_size[0]
        fresh_states = torch.randint(self.n_states, (n_envs,), generator=self._rng, device=self.device)
        if reset is None:
            self._state = fresh_states
            self._time = torch.zeros_like(self._time)
        else:
            reset = reset.reshape(n_envs)
            self._state = torch.where(reset, fresh_states, self._state)
            self._time = torch.where(reset, torch.zeros_like(self._time), self._time)
        out = self._observe()
        flags = torch.zeros(n_envs, 1, dtype=torch.bool, device=self.device)
        out.update({"done": flags, "terminated": flags.clone(), "truncated": flags.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION)
        joint = self.joint_action_index(actions)
        self._visited[self._state, joint] = True
        reward = self.rewards[self._state, joint]
        probabilities = self.transitions[self._state, joint]
        self._state = torch.multinomial(probabilities, 1, generator=self._rng).squeeze(-1)
        self._time = self._time + 1
        terminated = (self._time >= self.episode_limit).unsqueeze(-1)
        out = self._observe()
        out.update(
            {
                "reward": reward.unsqueeze(-1),
                "done": terminated,
                "terminated": terminated.clone(),
                "truncated": torch.zeros_like(terminated),
            }
        )
        return out

    def _set_seed(self, seed: int | None) -> None:
        self._rng.manual_seed(0 if seed is None else seed)

    # Part of a checkpoint: the rollout RNG (resuming continues the same episode stream) and the
    # visited pairs (the cover rate keeps counting across a resume).
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {"rng": self._rng.get_state(), "visited": self._visited.cpu()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self._rng.set_state(state["rng"])
        self._visited.copy_(state["visited"].to(self._visited.device))
