"""The most a seed-batched update could gain on this machine: DOP's per-timestep critic step (issue 29, item 5:
"where a ratio falls short, a profile of what bounds it").

    python benchmarks/seed_batching_bound.py                       # SMAX 3m's critic input, seeds 1 5 8
    python benchmarks/seed_batching_bound.py --seeds 5 --rows 36 --steps 300

A DOP / DOP+DMAC update is one critic optimiser step per timestep of its batch (``Dop.train_critic_per_timestep``;
updates are 93-95% of a run's wall time at the published schedules, docs/results/speed.md), each on the
per-agent critic ``DuelingMLP`` (256-256) over ``--rows`` rows (episodes x agents of one timestep). Two ways
to take that step for S seeds, each seed its own weights, RMSprop state and gradient clip:

* **separate**: S of our ``DuelingMLP``s, one after another (what ``dmac fit --seeds S`` does today);
* **stacked**: the same S networks' weights stacked along a seed dimension and run as one batched matrix
  product per layer, the S losses summed (the seeds' gradients stay apart), the clip computed per seed, one
  RMSprop step over the stacked tensors (RMSprop is elementwise, so it is S seeds' steps). This is the best
  case for any seed batching (``torch.func.vmap`` over ``functional_call`` lowers to the same batched products,
  plus its own overhead), written by hand for this one network;
* **vmapped**: the generic route issue 29 names: ``torch.func.stack_module_state`` over the S unchanged
  ``DuelingMLP``s, the loss of one seed written for one network and ``torch.func.vmap``-ed over the seed
  dimension through ``functional_call``, autograd through it, then the same per-seed clip and stacked RMSprop.
  Its cost over **stacked** is what the generic route pays for keeping the network and loss single-seed.

Before timing, both ways take a few steps from the same weights in float64 and must agree to 1e-10 (a bound
for a batched update that is exactly S separate ones). Prints one line per S:

    stacked critic step <S> seeds: separate <x> ms/seed stacked <y> ms/seed ratio <x/y> vmapped <z> ms/seed ratio <x/z>

The ratio bounds what batching the seeds could give DOP's critic steps on this CPU and thread count; the
rest of the update (the agent GRU unroll, targets, the actor step) batches no better.
"""

from __future__ import annotations

import argparse
from copy import deepcopy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmac_lightning.networks import DuelingMLP  # noqa: E402

# SMAX 3m (SMAC's state; make_env("smax", {"map_name": "3m"}, ...).info): the per-agent critic reads state 21 +
# observation 75 + agent id 3, and has 8 actions.
SMAX_3M_CRITIC_INPUT, SMAX_3M_ACTIONS = 99, 8


def layers(network: DuelingMLP) -> list[torch.nn.Linear]:
    return [module for module in network.trunk if isinstance(module, torch.nn.Linear)]


class SeparateSeeds:
    """S of our critics, each with its own RMSprop, stepped one after another."""

    def __init__(self, networks: list[DuelingMLP], lr: float, clip: float) -> None:
        self.networks, self.clip = networks, clip
        self.optimizers = [torch.optim.RMSprop(n.parameters(), lr=lr, alpha=0.99, eps=1e-5, foreach=True) for n in networks]

    def step(self, inputs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = []
        for seed, (network, optimizer) in enumerate(zip(self.networks, self.optimizers)):
            q_taken = network(inputs[seed]).gather(-1, actions[seed]).squeeze(-1)
            loss = ((q_taken - targets[seed]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), self.clip, foreach=True)
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)


class StackedSeeds:
    """The same S critics as stacked ``[S, in, out]`` weights: one batched product per layer for all seeds."""

    def __init__(self, networks: list[DuelingMLP], lr: float, clip: float) -> None:
        def stack(pick) -> list[torch.nn.Parameter]:
            return [torch.nn.Parameter(torch.stack([pick(n)[i] for n in networks]).detach().clone()) for i in range(len(pick(networks[0])))]

        # The trunk's linears, then the advantage and value heads side by side (one product for both).
        self.weights = stack(lambda n: [layer.weight.T for layer in layers(n)] + [torch.cat([n.advantage.weight, n.value.weight]).T])
        self.biases = stack(lambda n: [layer.bias.unsqueeze(0) for layer in layers(n)] + [torch.cat([n.advantage.bias, n.value.bias]).unsqueeze(0)])
        self.parameters = [*self.weights, *self.biases]
        self.clip = clip
        self.optimizer = torch.optim.RMSprop(self.parameters, lr=lr, alpha=0.99, eps=1e-5, foreach=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            hidden = torch.relu(torch.baddbmm(bias, hidden, weight))
        heads = torch.baddbmm(self.biases[-1], hidden, self.weights[-1])
        return heads[..., :-1] + heads[..., -1:]

    def step(self, inputs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q_taken = self.forward(inputs).gather(-1, actions).squeeze(-1)
        losses = ((q_taken - targets) ** 2).mean(-1)
        self.optimizer.zero_grad()
        losses.sum().backward()  # the seeds share no weight: each seed's slice gets its own loss's gradient
        clip_per_seed(self.parameters, self.clip)
        self.optimizer.step()
        return losses.detach()

    def network(self, seed: int, like: DuelingMLP) -> DuelingMLP:
        """Seed ``seed``'s weights back in a ``DuelingMLP``, for the equality check."""
        copy = DuelingMLP(like.trunk[0].in_features, [layer.out_features for layer in layers(like)], like.advantage.out_features).to(self.weights[0].dtype)
        with torch.no_grad():
            for layer, weight, bias in zip(layers(copy), self.weights, self.biases):
                layer.weight.copy_(weight[seed].T)
                layer.bias.copy_(bias[seed, 0])
            heads_weight, heads_bias = self.weights[-1][seed].T, self.biases[-1][seed, 0]
            copy.advantage.weight.copy_(heads_weight[:-1]), copy.advantage.bias.copy_(heads_bias[:-1])
            copy.value.weight.copy_(heads_weight[-1:]), copy.value.bias.copy_(heads_bias[-1:])
        return copy


def clip_per_seed(parameters: list[torch.Tensor], clip: float) -> None:
    """``clip_grad_norm_`` for each seed's slice of the stacked parameters (the same 1e-6 guard)."""
    norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in parameters]).sum(0).sqrt()
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))


class VmappedSeeds:
    """The S unchanged critics through ``torch.func``: stacked state, a single-seed loss vmapped over seeds."""

    def __init__(self, networks: list[DuelingMLP], lr: float, clip: float) -> None:
        params, buffers = torch.func.stack_module_state(networks)
        self.names = list(params)
        self.parameters = [torch.nn.Parameter(params[name].detach().clone()) for name in self.names]
        self.buffers = buffers
        self.clip = clip
        # The network's structure only (its own weights are never used): functional_call takes every tensor.
        self.template = deepcopy(networks[0]).to("meta")
        self.optimizer = torch.optim.RMSprop(self.parameters, lr=lr, alpha=0.99, eps=1e-5, foreach=True)

        def seed_loss(params: dict, buffers: dict, inputs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            q_taken = torch.func.functional_call(self.template, (params, buffers), (inputs,)).gather(-1, actions).squeeze(-1)
            return ((q_taken - targets) ** 2).mean()

        self.losses = torch.func.vmap(seed_loss)

    def step(self, inputs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.losses(dict(zip(self.names, self.parameters)), self.buffers, inputs, actions, targets)
        self.optimizer.zero_grad()
        losses.sum().backward()
        clip_per_seed(self.parameters, self.clip)
        self.optimizer.step()
        return losses.detach()

    def network(self, seed: int, like: DuelingMLP) -> DuelingMLP:
        copy = DuelingMLP(like.trunk[0].in_features, [layer.out_features for layer in layers(like)], like.advantage.out_features).to(self.parameters[0].dtype)
        copy.load_state_dict({name: p[seed].detach() for name, p in zip(self.names, self.parameters)})
        return copy


def problem(seeds: int, rows: int, input_dim: int, n_actions: int, dtype: torch.dtype, generator: torch.Generator):
    inputs = torch.randn(seeds, rows, input_dim, generator=generator, dtype=dtype)
    actions = torch.randint(0, n_actions, (seeds, rows, 1), generator=generator)
    targets = 3 * torch.randn(seeds, rows, generator=generator, dtype=dtype)
    return inputs, actions, targets


def networks(seeds: int, input_dim: int, n_actions: int, dtype: torch.dtype) -> list[DuelingMLP]:
    made = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        made.append(DuelingMLP(input_dim, [256, 256], n_actions).to(dtype))
    return made


def check_equal(way: type, input_dim: int, n_actions: int, rows: int) -> float:
    """Largest weight difference between ``way`` and separate after 5 steps of 3 seeds, float64."""
    generator = torch.Generator().manual_seed(0)
    separate = SeparateSeeds(networks(3, input_dim, n_actions, torch.float64), lr=5e-4, clip=1.0)  # a clip that binds
    stacked = way(networks(3, input_dim, n_actions, torch.float64), lr=5e-4, clip=1.0)
    for _ in range(5):
        batch = problem(3, rows, input_dim, n_actions, torch.float64, generator)
        separate_losses, stacked_losses = separate.step(*batch), stacked.step(*batch)
        assert torch.allclose(separate_losses, stacked_losses, rtol=0, atol=1e-10), (separate_losses, stacked_losses)
    return max(
        (a - b).abs().max().item()
        for seed, network in enumerate(separate.networks)
        for a, b in zip(network.state_dict().values(), stacked.network(seed, network).state_dict().values())
    )


def time_steps(way: type, seeds: int, rows: int, input_dim: int, n_actions: int, steps: int) -> float:
    """Milliseconds per seed per critic step, median of three repetitions."""
    generator = torch.Generator().manual_seed(1)
    batch = problem(seeds, rows, input_dim, n_actions, torch.float32, generator)
    times = []
    for _ in range(3):
        stepper = way(networks(seeds, input_dim, n_actions, torch.float32), lr=5e-4, clip=10.0)
        for _ in range(10):
            stepper.step(*batch)
        started = time.perf_counter()
        for _ in range(steps):
            stepper.step(*batch)
        times.append((time.perf_counter() - started) / steps / seeds * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 5, 8])
    parser.add_argument("--rows", type=int, default=36, help="rows per critic step: episodes x agents (authors' DMAC on 3m: 12 x 3)")
    parser.add_argument("--input-dim", type=int, default=SMAX_3M_CRITIC_INPUT)
    parser.add_argument("--actions", type=int, default=SMAX_3M_ACTIONS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for way in (StackedSeeds, VmappedSeeds):
        difference = check_equal(way, args.input_dim, args.actions, args.rows)
        assert difference < 1e-10, f"{way.__name__} and separate steps differ by {difference}"
        print(f"# {way.__name__} equals separate (3 seeds, 5 steps, float64, binding clip): largest weight difference {difference:.1e}")
    for seeds in args.seeds:
        separate = time_steps(SeparateSeeds, seeds, args.rows, args.input_dim, args.actions, args.steps)
        stacked = time_steps(StackedSeeds, seeds, args.rows, args.input_dim, args.actions, args.steps)
        vmapped = time_steps(VmappedSeeds, seeds, args.rows, args.input_dim, args.actions, args.steps)
        print(f"stacked critic step {seeds} seeds: separate {separate:.3f} ms/seed stacked {stacked:.3f} ms/seed "
              f"ratio {separate / stacked:.2f} vmapped {vmapped:.3f} ms/seed ratio {separate / vmapped:.2f}", flush=True)


if __name__ == "__main__":
    main()
