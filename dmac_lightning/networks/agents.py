"""The agent network (policy or individual Q-network) and its inputs (paper App. C.2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def agent_inputs(observation: torch.Tensor, last_action: torch.Tensor | None) -> torch.Tensor:
    """Per-agent network input: observation, optional last action one-hot, and a one-hot agent id.

    ``observation`` is ``[..., n_agents, obs_dim]``; parameters are shared across agents, so the id
    is what lets them behave differently.
    """
    n_agents = observation.shape[-2]
    agent_id = torch.eye(n_agents, device=observation.device, dtype=observation.dtype)
    parts = [observation]
    if last_action is not None:
        parts.append(last_action.to(observation.dtype))
    parts.append(agent_id.expand(*observation.shape[:-1], n_agents))
    return torch.cat(parts, dim=-1)


def agent_input_dim(obs_dim: int, n_agents: int, n_actions: int, last_action: bool) -> int:
    return obs_dim + n_agents + (n_actions if last_action else 0)


def previous_actions_one_hot(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``[B, T, n]`` actions -> ``[B, T, n, n_actions]`` one-hot of the action taken one step earlier."""
    one_hot = F.one_hot(actions, n_actions).to(torch.get_default_dtype())
    return torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], dim=1)


class AgentRNN(nn.Module):
    """The paper's agent network: Linear-ReLU-GRU-Linear, shared by all agents.

    ``step`` advances one timestep for collection (hidden state carried outside); ``unroll`` runs a
    whole stored episode batch from a zero state with one ``nn.GRU`` call over ``[T, B*n, H]`` (the
    same math as a GRUCell loop, one kernel instead of ``T``).
    """

    def __init__(self, input_dim: int, n_outputs: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRU(hidden_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim, n_outputs)

    def step(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs [..., input_dim]``, ``hidden [..., H]`` -> outputs ``[..., n_outputs]``, next hidden."""
        batch_shape = inputs.shape[:-1]
        x = F.relu(self.encoder(inputs.reshape(1, -1, inputs.shape[-1])))
        out, next_hidden = self.rnn(x, hidden.reshape(1, -1, self.hidden_dim))
        return self.head(out[0]).view(*batch_shape, -1), next_hidden[0].view(*batch_shape, self.hidden_dim)

    def unroll(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs [B, T, n, input_dim]`` -> outputs ``[B, T, n, n_outputs]`` from a zero hidden state."""
        batch, steps, n_agents, _ = inputs.shape
        x = F.relu(self.encoder(inputs)).permute(1, 0, 2, 3).reshape(steps, batch * n_agents, self.hidden_dim)
        out, _ = self.rnn(x)
        out = out.view(steps, batch, n_agents, self.hidden_dim).permute(1, 0, 2, 3)
        return self.head(out)
