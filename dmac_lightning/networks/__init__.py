"""Plain ``nn.Module`` networks shared by the algorithms (paper App. C.2)."""

from dmac_lightning.networks.agents import AgentRNN, agent_input_dim, agent_inputs, previous_actions_one_hot
from dmac_lightning.networks.critics import AttentionCritic, CounterfactualCritic, DuelingMLP, individual_critic_inputs, mlp
from dmac_lightning.networks.mixers import FOPMixer, LinearDecompositionMixer, MLPMixer, MonotonicMixer

__all__ = [
    "AgentRNN", "AttentionCritic", "CounterfactualCritic", "DuelingMLP", "FOPMixer", "LinearDecompositionMixer", "MLPMixer",
    "MonotonicMixer", "agent_input_dim", "agent_inputs", "individual_critic_inputs", "mlp", "previous_actions_one_hot",
]
