"""Mixing networks: individual Q-values (and the state) -> the joint Q_tot."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dmac_lightning.networks.critics import mlp


class MonotonicMixer(nn.Module):
    """QMIX's mixer: hypernetworks of the state give non-negative weights, so dQ_tot/dQ_i >= 0."""

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = 32, hypernet_dim: int = 64) -> None:
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = mlp(state_dim, [hypernet_dim], n_agents * embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = mlp(state_dim, [hypernet_dim], embed_dim)
        self.hyper_b2 = mlp(state_dim, [embed_dim], 1)

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``agent_qs [..., n]``, ``state [..., S]`` -> ``Q_tot [...]``."""
        w1 = self.hyper_w1(state).abs().view(*state.shape[:-1], self.n_agents, self.embed_dim)
        hidden = F.elu(torch.einsum("...n,...ne->...e", agent_qs, w1) + self.hyper_b1(state))
        w2 = self.hyper_w2(state).abs()
        return (hidden * w2).sum(-1) + self.hyper_b2(state).squeeze(-1)


class MLPMixer(nn.Module):
    """QMIX+DMAC's mixer: an unconstrained MLP over ``[Q_1..Q_n, s]`` (no max in the target, so no IGM needed)."""

    def __init__(self, state_dim: int, n_agents: int, hidden_dim: int = 32) -> None:
        super().__init__()
        self.net = mlp(n_agents + state_dim, [hidden_dim], 1)

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        state = state.expand(*agent_qs.shape[:-1], state.shape[-1])
        return self.net(torch.cat([agent_qs, state], dim=-1)).squeeze(-1)


class LinearDecompositionMixer(nn.Module):
    """DOP's linear value decomposition as its code has it: ``Q_tot = sum_i k_i(s) Q_i`` with
    ``k(s) = |W_1(s)| |w(s)|`` (two linear maps of the state, hidden ``embed_dim``) normalised so that
    ``k_i(s) >= 0`` and ``sum_i k_i(s) = 1``; no state bias ``b(s)`` (DOP's paper has one, its code and
    the authors' DOP+DMAC do not)."""

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = 32) -> None:
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = nn.Linear(state_dim, n_agents * embed_dim)
        self.hyper_w_final = nn.Linear(state_dim, embed_dim)

    def k(self, state: torch.Tensor) -> torch.Tensor:
        """``[..., n]``: non-negative, summing to 1 over agents."""
        w1 = self.hyper_w1(state).abs().view(*state.shape[:-1], self.n_agents, self.embed_dim)
        k = (w1 * self.hyper_w_final(state).abs().unsqueeze(-2)).sum(-1)
        return k / k.sum(-1, keepdim=True).clamp(min=1e-10)

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return (self.k(state) * agent_qs).sum(-1)


class FOPMixer(nn.Module):
    """FOP's mixer (Zhang et al., 2021) as the authors' FOP baseline has it:
    ``Q_tot = sum_i w_i Q_i + V(s) + sum_i (lambda_i(s, a) - 1) w_i (Q_i - V_i)``.

    ``w_i(s) > 0``: multi-head attention (summed over heads, so ``sum_i w_i = n_heads``) of a state
    query on per-agent keys, each head's query from a hypernetwork of its own (Linear-ReLU-Linear, as
    the published code's ``selector_extractors``); ``lambda_i(s, a) > 0``: a multi-head product of a
    state key, a state-agent gate and a state-action gate; ``V(s)``: an MLP. The advantage term enters
    without gradient, as in the published code. The published keys read each ally's block of SMAC's
    state vector; ours read each agent's observation, which every env has (docs/algorithms.md).
    """

    def __init__(
        self, state_dim: int, obs_dim: int, n_agents: int, n_actions: int, n_heads: int = 4, embed_dim: int = 32,
        attention_dim: int = 32, hypernet_dim: int = 64,
    ) -> None:
        super().__init__()
        self.n_agents, self.n_actions, self.n_heads, self.attention_dim = n_agents, n_actions, n_heads, attention_dim
        self.head_keys = nn.Linear(state_dim, n_heads)
        self.head_agents = nn.Linear(state_dim, n_heads * n_agents)
        self.head_actions = nn.Linear(state_dim + n_agents * n_actions, n_heads * n_agents)
        self.value = mlp(state_dim, [embed_dim], 1)
        # Every head's query hypernetwork, all heads in one matmul a layer: the hidden layers side by side,
        # then each head's output layer on its own hidden block (no bias, as published).
        self.query_hidden = nn.Linear(state_dim, n_heads * hypernet_dim)
        self.query_out = nn.Parameter(torch.empty(n_heads, hypernet_dim, attention_dim))
        nn.init.uniform_(self.query_out, -hypernet_dim**-0.5, hypernet_dim**-0.5)  # nn.Linear(hypernet_dim, attention_dim)'s init
        self.keys = nn.Linear(obs_dim, n_heads * attention_dim, bias=False)

    def lambda_weights(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        batch_shape = actions.shape[:-1]
        joint = F.one_hot(actions, self.n_actions).to(state.dtype).reshape(*batch_shape, -1)
        key = self.head_keys(state).abs().unsqueeze(-1) + 1e-10  # [..., heads, 1]
        agents = torch.sigmoid(self.head_agents(state)).view(*batch_shape, self.n_heads, self.n_agents)
        chosen = torch.sigmoid(self.head_actions(torch.cat([state, joint], -1))).view(*batch_shape, self.n_heads, self.n_agents)
        return (key * agents * chosen).sum(-2)

    def attention(self, state: torch.Tensor, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w [..., n]`` and the attention logits ``[..., heads, n]`` (for the regulariser)."""
        batch_shape = observation.shape[:-2]
        hidden = F.relu(self.query_hidden(state)).view(*batch_shape, self.n_heads, -1)
        query = torch.einsum("...hk,hkd->...hd", hidden, self.query_out).unsqueeze(-2)  # [..., heads, 1, d]
        keys = self.keys(observation).view(*batch_shape, self.n_agents, self.n_heads, self.attention_dim).transpose(-2, -3)
        logits = (query * keys).sum(-1)  # [..., heads, n]
        weights = torch.softmax(logits / self.attention_dim**0.5, dim=-1).sum(-2) + 1e-10
        return weights, logits

    def forward(
        self, agent_qs: torch.Tensor, agent_values: torch.Tensor, state: torch.Tensor, actions: torch.Tensor, observation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``agent_qs``, ``agent_values [..., n]`` (Q_i(a_i), V_i), ``state [..., S]``, ``actions [..., n]``,
        ``observation [..., n, O]`` -> ``Q_tot [...]`` and the attention logits."""
        weights, logits = self.attention(state, observation)
        advantage = (weights * (agent_qs - agent_values)).detach()
        corrected = (advantage * (self.lambda_weights(state, actions) - 1)).sum(-1)
        return corrected + (weights * agent_qs).sum(-1) + self.value(state).squeeze(-1), logits


def counterfactual_q(mixer: nn.Module, q_values: torch.Tensor, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``Q_tot(s, (a'_i, a_-i))`` for every agent i and alternative a'_i, in one mixer call.

    ``q_values [..., n, A]`` individual Q-values, ``actions [..., n]``, ``state [..., S]`` ->
    ``[..., n, A]``. Entry ``[i, a']`` mixes the chosen Q-values with agent i's replaced by ``Q_i(a')``.
    """
    n_agents, n_actions = q_values.shape[-2:]
    chosen = q_values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [..., n]
    joint = chosen[..., None, None, :].expand(*chosen.shape[:-1], n_agents, n_actions, n_agents)
    own = torch.eye(n_agents, dtype=torch.bool, device=q_values.device)[:, None, :]  # [i, 1, j]: j == i
    joint = torch.where(own, q_values.unsqueeze(-1), joint)
    return mixer(joint, state[..., None, None, :].expand(*joint.shape[:-1], state.shape[-1]))
