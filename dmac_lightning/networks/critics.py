"""Centralised critics: COMA's counterfactual MLP, per-agent MLP critics, MAAC's attention critic."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def mlp(input_dim: int, hidden_dims: list[int], output_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(input_dim, width), nn.ReLU()]
        input_dim = width
    layers.append(nn.Linear(input_dim, output_dim))
    return nn.Sequential(*layers)


class CounterfactualCritic(nn.Module):
    """COMA's centralised critic ``Q(s, a_-i, .)``: an MLP that outputs agent i's row of Q-values.

    Input per agent: state, the agent's observation, the other agents' actions one-hot (its own
    masked out), every agent's previous action one-hot, and the agent id.
    """

    def __init__(self, state_dim: int, obs_dim: int, n_agents: int, n_actions: int, hidden_dims: list[int]) -> None:
        super().__init__()
        self.n_agents, self.n_actions = n_agents, n_actions
        input_dim = state_dim + obs_dim + 2 * n_agents * n_actions + n_agents
        self.net = mlp(input_dim, hidden_dims, n_actions)

    def forward(
        self,
        state: torch.Tensor,
        observation: torch.Tensor,
        actions: torch.Tensor,
        last_actions: torch.Tensor,
    ) -> torch.Tensor:
        """``state [..., S]``, ``observation [..., n, O]``, ``actions [..., n]`` long,
        ``last_actions [..., n, A]`` -> ``Q [..., n, A]``: row i is ``Q(s, (., a_-i))``."""
        n, n_actions = self.n_agents, self.n_actions
        batch_shape = actions.shape[:-1]
        joint = F.one_hot(actions, n_actions).to(state.dtype).reshape(*batch_shape, 1, n * n_actions)
        others_only = (1 - torch.eye(n, device=actions.device)).repeat_interleave(n_actions, dim=-1)
        inputs = torch.cat(
            [
                state.unsqueeze(-2).expand(*batch_shape, n, state.shape[-1]),
                observation,
                joint.expand(*batch_shape, n, n * n_actions) * others_only,
                last_actions.reshape(*batch_shape, 1, n * n_actions).expand(*batch_shape, n, n * n_actions),
                torch.eye(n, device=actions.device).expand(*batch_shape, n, n),
            ],
            dim=-1,
        )
        return self.net(inputs)


class DuelingMLP(nn.Module):
    """An MLP trunk with an action head and a value head, ``Q(., a) = A(., a) + V(.)`` (DOP's critic; the
    mean of A is not subtracted, as there)."""

    def __init__(self, input_dim: int, hidden_dims: list[int], n_actions: int) -> None:
        super().__init__()
        self.trunk = mlp(input_dim, hidden_dims[:-1], hidden_dims[-1])
        self.advantage = nn.Linear(hidden_dims[-1], n_actions)
        self.value = nn.Linear(hidden_dims[-1], 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.trunk(inputs))
        return self.advantage(hidden) + self.value(hidden)


def individual_critic_inputs(observation: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """Per-agent critic input ``[..., n, (state +) obs + n]``: optional state, observation, agent id."""
    n_agents = observation.shape[-2]
    parts = [] if state is None else [state.unsqueeze(-2).expand(*observation.shape[:-1], state.shape[-1])]
    parts += [observation, torch.eye(n_agents, device=observation.device).expand(*observation.shape[:-1], n_agents)]
    return torch.cat(parts, dim=-1)


class AttentionCritic(nn.Module):
    """MAAC's attention critic (Iqbal & Sha, 2019) with shared parameters and a GRU (paper C.2).

    Agent i's history is encoded by a GRU into ``h_i``; every other agent j contributes
    ``e_j = f(h_j, a_j)``; multi-head attention from ``h_i`` over the ``e_j`` gives ``x_i``; and
    ``Q_i(tau, (., a_-i)) = g(h_i, x_i)`` for all of agent i's actions. Own action is not an input, so
    row i is exactly the counterfactual row the baseline needs.
    """

    def __init__(
        self, input_dim: int, n_agents: int, n_actions: int, hidden_dim: int = 128, n_heads: int = 4, attention_dim: int = 32
    ) -> None:
        super().__init__()
        self.n_agents, self.n_actions = n_agents, n_actions
        self.n_heads, self.attention_dim, self.hidden_dim = n_heads, attention_dim, hidden_dim
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRU(hidden_dim, hidden_dim)
        self.action_encoder = nn.Linear(hidden_dim + n_actions, hidden_dim)
        width = n_heads * attention_dim
        self.queries = nn.Linear(hidden_dim, width, bias=False)
        self.keys = nn.Linear(hidden_dim, width, bias=False)
        self.values = nn.Sequential(nn.Linear(hidden_dim, width), nn.LeakyReLU())
        self.head = nn.Sequential(nn.Linear(hidden_dim + width, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, n_actions))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs [B, T, n, in]`` -> histories ``[B, T, n, H]`` (one GRU call from a zero state)."""
        batch, steps, n_agents, _ = inputs.shape
        x = F.relu(self.encoder(inputs)).permute(1, 0, 2, 3).reshape(steps, batch * n_agents, self.hidden_dim)
        out, _ = self.rnn(x)
        return out.view(steps, batch, n_agents, self.hidden_dim).permute(1, 0, 2, 3)

    def forward(self, histories: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``histories [..., n, H]``, ``actions [..., n]`` -> ``Q [..., n, A]`` and the attention logits
        (unscaled, of agent pairs i != j, flattened; MAAC regularises their squares)."""
        batch_shape = actions.shape[:-1]
        n, heads, dim = self.n_agents, self.n_heads, self.attention_dim
        encoded = F.relu(self.action_encoder(torch.cat([histories, F.one_hot(actions, self.n_actions).to(histories.dtype)], -1)))
        query = self.queries(histories).view(*batch_shape, n, heads, dim)
        key = self.keys(encoded).view(*batch_shape, n, heads, dim)
        value = self.values(encoded).view(*batch_shape, n, heads, dim)
        logits = torch.einsum("...ihd,...jhd->...hij", query, key)
        if n > 1:
            others = ~torch.eye(n, dtype=torch.bool, device=actions.device)
            weights = torch.softmax((logits / math.sqrt(dim)).masked_fill(~others, float("-inf")), dim=-1)
            attended = torch.einsum("...hij,...jhd->...ihd", weights, value).reshape(*batch_shape, n, heads * dim)
            logits = logits.masked_select(others.expand_as(logits))
        else:  # alone: nothing to attend to
            attended = histories.new_zeros(*batch_shape, n, heads * dim)
        return self.head(torch.cat([histories, attended], dim=-1)), logits
