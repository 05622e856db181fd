"""Update-level equivalence: the DMAC authors' DOP+DMAC (DMAC_Learner, PKU-RL/FOP-DMAC-MACPF @ 67aacc4, patched)
against dmac-lightning's DopDmac, on the same weights and the same batch, stage by stage, in float64.

Run in their venv (the README of this folder makes it), with our repository and their src/ on the path:
    cd /work/peers/authors/FOP-DMAC-MACPF/src && AUTHORS_SRC=$PWD DMAC_ROOT=/work/main \
    PYTHONPATH=/work/main:. OMP_NUM_THREADS=1 ../../venv/bin/python -W ignore /work/main/docs/results/as_published/authors_peer/update_check.py
Its output at the commit of this file: update_check.out (beside it).

Nothing under /work/main is modified: our module is only driven from outside (its optimisers given as plain
torch optimisers, as benchmarks/updates.py:time_bare does, and its target-critic callbacks called by hand).
"""

from __future__ import annotations

import collections.abc
import copy
import logging
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import torch
import yaml

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

SRC = os.environ.get("AUTHORS_SRC", "/work/peers/authors/FOP-DMAC-MACPF/src")
sys.path[:0] = [SRC, os.environ.get("DMAC_ROOT", "/work/main")]

# theirs
from components.episode_buffer import EpisodeBatch as PyEpisodeBatch, ReplayBuffer  # noqa: E402
from components.transforms import OneHot  # noqa: E402
from controllers import REGISTRY as mac_REGISTRY  # noqa: E402
from runners import REGISTRY as r_REGISTRY  # noqa: E402
import learners.dmac_learner as dmac_learner_mod  # noqa: E402
from learners.dmac_learner import DMAC_Learner  # noqa: E402

# ours
from tensordict import TensorDict  # noqa: E402
import dmac_lightning.algorithms.episodes as our_episodes_mod  # noqa: E402
from dmac_lightning.algorithms import DopDmac  # noqa: E402
from dmac_lightning.algorithms.dmac import DivergenceRegularized  # noqa: E402
from dmac_lightning.algorithms.dop import Dop  # noqa: E402
from dmac_lightning.targets import TargetNetworkUpdate  # noqa: E402
from benchmarks.peers.pymarl_env import PymarlEnv  # noqa: E402

GAME = {"n_states": 10, "n_agents": 3, "n_actions": 3, "episode_limit": 10, "game_seed": 0}
REWARD_SCALE = 5.0  # their omega = 1 / reward_scale = 0.2
N_EPISODES = 12
OUT: list[str] = []


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    OUT.append(line)


# ---------------------------------------------------------------------------------------------------------
# their args, as main.py + run.py build them
def recursive_update(d, u):
    for k, v in u.items():
        if isinstance(v, collections.abc.Mapping):
            d[k] = recursive_update(d.get(k, {}), v)
        else:
            d[k] = v
    return d


def their_args(env_info: dict) -> SimpleNamespace:
    with open(os.path.join(SRC, "config", "default.yaml")) as f:
        config = yaml.load(f, Loader=yaml.FullLoader)
    with open(os.path.join(SRC, "config", "algs", "dmac.yaml")) as f:
        config = recursive_update(config, yaml.load(f, Loader=yaml.FullLoader))
    config.update(
        env="ours",
        env_args={"env": "stochastic_game", "env_kwargs": dict(GAME), "seed": 0, "map_name": "reduced_game"},
        reward_scale=REWARD_SCALE, use_cuda=False, seed=0, unit_dim=None,
    )
    args = SimpleNamespace(**config)
    args.device = "cpu"
    args.episode_limit = env_info["episode_limit"]
    args.n_agents = env_info["n_agents"]
    args.n_actions = env_info["n_actions"]
    args.state_shape = env_info["state_shape"]
    return args


class DummyLogger:
    def __init__(self):
        self.console_logger = logging.getLogger("their_learner")
        self.stats = collections.defaultdict(list)

    def log_stat(self, key, value, t):
        self.stats[key].append(value)


def build_theirs(args):
    scheme = {
        "state": {"vshape": args.state_shape},
        "obs": {"vshape": OBS_DIM, "group": "agents"},
        "actions": {"vshape": (1,), "group": "agents", "dtype": torch.long},
        "avail_actions": {"vshape": (args.n_actions,), "group": "agents", "dtype": torch.int},
        "avail_agents": {"vshape": (args.n_agents,), "group": "agents", "dtype": torch.int},
        "reward": {"vshape": (1,)},
        "terminated": {"vshape": (1,), "dtype": torch.uint8},
    }
    groups = {"agents": args.n_agents}
    preprocess = {"actions": ("actions_onehot", [OneHot(out_dim=args.n_actions)])}
    buffer = ReplayBuffer(scheme, groups, 5000, args.episode_limit + 1, args.burn_in_period, preprocess=preprocess, device="cpu")
    mac = mac_REGISTRY[args.mac](buffer.scheme, groups, args)
    logger = DummyLogger()
    learner = DMAC_Learner(mac, buffer.scheme, logger, args)
    return scheme, groups, preprocess, buffer, mac, learner, logger


# ---------------------------------------------------------------------------------------------------------
# weight mapping theirs -> ours
AGENT_MAP = {
    "fc1.weight": "encoder.weight", "fc1.bias": "encoder.bias",
    "rnn.weight_ih": "rnn.weight_ih_l0", "rnn.weight_hh": "rnn.weight_hh_l0",
    "rnn.bias_ih": "rnn.bias_ih_l0", "rnn.bias_hh": "rnn.bias_hh_l0",
    "fc2.weight": "head.weight", "fc2.bias": "head.bias",
}
CRITIC_MAP = {
    "fc1.weight": "trunk.0.weight", "fc1.bias": "trunk.0.bias", "fc2.weight": "trunk.2.weight", "fc2.bias": "trunk.2.bias",
    "fc3.weight": "advantage.weight", "fc3.bias": "advantage.bias", "fc_v.weight": "value.weight", "fc_v.bias": "value.bias",
}
MIXER_MAP = {
    "hyper_w_1.weight": "hyper_w1.weight", "hyper_w_1.bias": "hyper_w1.bias",
    "hyper_w_final.weight": "hyper_w_final.weight", "hyper_w_final.bias": "hyper_w_final.bias",
}


def pairs(learner, ours):
    """(label, their module, our module, name map) for every network pair."""
    return [
        ("actor", learner.mac.agent, ours.actor, AGENT_MAP),
        ("rho", learner.target_mac.agent, ours.target_actor, AGENT_MAP),
        ("critic", learner.critic1, ours.critic, CRITIC_MAP),
        ("mixer", learner.mixer1, ours.mixer, MIXER_MAP),
        ("target_critic", learner.target_critic1, ours.target_critic, CRITIC_MAP),
        ("target_mixer", learner.target_mixer1, ours.target_mixer, MIXER_MAP),
    ]


def copy_weights(learner, ours):
    for label, theirs_m, ours_m, name_map in pairs(learner, ours):
        their_params = dict(theirs_m.named_parameters())
        our_params = dict(ours_m.named_parameters())
        unmapped = set(our_params) - set(name_map.values())
        assert not unmapped, (label, unmapped)
        for their_name, our_name in name_map.items():
            src, dst = their_params[their_name], our_params[our_name]
            assert src.shape == dst.shape, (label, their_name, src.shape, our_name, dst.shape)
            with torch.no_grad():
                dst.copy_(src)
        unused = set(their_params) - set(name_map)
        if unused:
            say(f"  [{label}] their parameters with no counterpart (unused in forward on this path): {sorted(unused)}")


def weight_diffs(learner, ours):
    out = {}
    for label, theirs_m, ours_m, name_map in pairs(learner, ours):
        tp, op = dict(theirs_m.named_parameters()), dict(ours_m.named_parameters())
        out[label] = max((tp[t].detach() - op[o].detach()).abs().max().item() for t, o in name_map.items())
    return out


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return max((a - b.detach()).abs().max().item() for a, b in zip(before, module.parameters()))


# ---------------------------------------------------------------------------------------------------------
# data: canonical episodes <-> their EpisodeBatch / our TensorDict
def canonical_from_pymarl(batch):
    eps = []
    for b in range(batch.batch_size):
        filled = batch["filled"][b, :, 0]
        k = int(filled.sum()) - 1  # real steps; slot k is the bootstrap entry (filled by the runner)
        eps.append(dict(
            obs=batch["obs"][b, : k + 1].clone(), state=batch["state"][b, : k + 1].clone(),
            avail=batch["avail_actions"][b, : k + 1].clone(), actions=batch["actions"][b, : k + 1, :, 0].clone(),
            reward=batch["reward"][b, :k, 0].clone(), terminated=batch["terminated"][b, :k, 0].clone(),
        ))
    return eps


def to_pymarl(eps, L, scheme, groups, preprocess):
    """Episodes written the way runners/episode_runner.py writes them, into a batch like ReplayBuffer's."""
    batch = PyEpisodeBatch(scheme, groups, len(eps), L, preprocess=preprocess, device="cpu")
    for b, e in enumerate(eps):
        k = e["reward"].shape[0]
        bs = slice(b, b + 1)
        batch.update({"state": e["state"][:k].numpy(), "avail_actions": e["avail"][:k].numpy(), "obs": e["obs"][:k].numpy()},
                     bs=bs, ts=slice(0, k))
        batch.update({"actions": e["actions"][:k, :, None].numpy(), "reward": e["reward"][:k, None].numpy(),
                      "terminated": e["terminated"][:k, None].numpy()}, bs=bs, ts=slice(0, k))
        batch.update({"state": e["state"][k:].numpy(), "avail_actions": e["avail"][k:].numpy(), "obs": e["obs"][k:].numpy()},
                     bs=bs, ts=slice(k, k + 1))
        batch.update({"actions": e["actions"][k:, :, None].numpy()}, bs=bs, ts=slice(k, k + 1))
    return batch


def to_float64(batch):
    for key, value in batch.data.transition_data.items():
        if value.dtype == torch.float32:
            batch.data.transition_data[key] = value.double()
    return batch


def to_ours(eps, L, n_agents, n_actions):
    """Episodes in our stored layout (datamodules/assembler.py): slot t < k the step, slot k the bootstrap
    observation/state/mask (filled False), padding zeros with every action available."""
    B = len(eps)
    O, S = eps[0]["obs"].shape[-1], eps[0]["state"].shape[-1]
    obs = torch.zeros(B, L, n_agents, O)
    state = torch.zeros(B, L, S)
    mask = torch.ones(B, L, n_agents, n_actions, dtype=torch.bool)
    action = torch.zeros(B, L, n_agents, dtype=torch.long)
    reward = torch.zeros(B, L, 1)
    terminated = torch.zeros(B, L, 1, dtype=torch.bool)
    filled = torch.zeros(B, L, dtype=torch.bool)
    for b, e in enumerate(eps):
        k = e["reward"].shape[0]
        obs[b, : k + 1] = e["obs"].double()
        state[b, : k + 1] = e["state"].double()
        mask[b, : k + 1] = e["avail"].bool()
        action[b, :k] = e["actions"][:k]
        reward[b, :k, 0] = e["reward"].double()
        terminated[b, :k, 0] = e["terminated"].bool()
        filled[b, :k] = True
    return TensorDict(
        {"agents": {"observation": obs, "action_mask": mask, "action": action}, "state": state, "reward": reward,
         "terminated": terminated, "filled": filled},
        batch_size=[B, L],
    )


# ---------------------------------------------------------------------------------------------------------
# capture of function locals at return (no edits to either code base)
class LocalsCapture:
    def __init__(self, functions: dict):
        self.codes = {f.__code__: name for name, f in functions.items()}
        self.store = collections.defaultdict(list)
        self.enabled = True

    def __call__(self, frame, event, arg):
        if self.enabled and event == "return" and frame.f_code in self.codes:
            self.store[self.codes[frame.f_code]].append(dict(frame.f_locals))

    def clear(self):
        self.store.clear()


CAPTURE = LocalsCapture({
    "their_actor": DMAC_Learner.train_actor_DOP,
    "their_critic": DMAC_Learner.train_critic_DOP,
    "our_actor": Dop.actor_step,
    "our_critic_targets": DopDmac.critic_targets,
    "our_regularized_targets": DivergenceRegularized.regularized_targets,
    "our_per_timestep": Dop.train_critic_per_timestep,
})

# gradient-norm clip calls of both sides: pre-clip gradients, the norm, post-clip gradients
SIDE = ["none"]
CLIPS: list = []
CLIP_CAPTURE = [True]
_orig_clip = torch.nn.utils.clip_grad_norm_


def _clip_wrap(parameters, max_norm, *a, **k):
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    if not CLIP_CAPTURE[0]:
        return _orig_clip(params, max_norm, *a, **k)
    pre = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    norm = _orig_clip(params, max_norm, *a, **k)
    post = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    CLIPS.append(dict(side=SIDE[0], max_norm=max_norm, n_params=len(params), n_with_grad=len(pre), pre=pre, post=post,
                      norm=float(norm)))
    return norm


torch.nn.utils.clip_grad_norm_ = _clip_wrap


class FixedCategorical:
    """Stands in for torch.distributions.Categorical in dmac_learner.py's actor (L118): the fixed actions."""
    actions = None

    def __init__(self, probs):
        self.probs = probs

    def sample(self):
        return FixedCategorical.actions.clone()


dmac_learner_mod.Categorical = FixedCategorical

BOOTSTRAP = {"actions": None}  # None: our own sampling; a [B, L, n] tensor: those actions where filled is False
_orig_sample = our_episodes_mod.sample


def _bootstrap_sample(log_pi):
    if BOOTSTRAP["actions"] is None:
        return _orig_sample(log_pi)
    return BOOTSTRAP["actions"].clone()


our_episodes_mod.sample = _bootstrap_sample


# ---------------------------------------------------------------------------------------------------------
def build_ours(info):
    module = DopDmac(
        lr_actor=5e-4, lr_critic=5e-4, omega=1.0 / REWARD_SCALE, tau=0.01, target_critic_copy_every=200, td_lambda=0.8,
        gamma=0.99, grad_clip_norm=10.0, rmsprop_alpha=0.99, rmsprop_eps=1e-5, critic_hidden_dims=[256, 256],
        mixing_embed_dim=32, hidden_dim=64,
    )
    module.configure_env(info)
    optimizers = module.configure_optimizers()
    module.optimizers = types.MethodType(lambda self: optimizers, module)
    module.manual_backward = types.MethodType(lambda self, loss: loss.backward(), module)
    module.recorded = collections.defaultdict(list)

    def record(self, **metrics):
        for k, v in metrics.items():
            self.recorded[k].append(float(v))

    module.record = types.MethodType(record, module)
    callbacks = [c for c in module.configure_callbacks() if isinstance(c, TargetNetworkUpdate)]
    return module, optimizers, callbacks


def our_update(module, callbacks, episodes):
    SIDE[0] = "ours"
    module.update_on(episodes)
    for callback in callbacks:
        callback.on_train_batch_end(None, module, {"updated": True}, None, 0)
    SIDE[0] = "none"


def their_update(learner, batch):
    SIDE[0] = "theirs"
    learner.train(batch, 0, 0)
    SIDE[0] = "none"


def mx(a, b, where=None):
    d = (a - b).abs()
    if where is not None:
        d = d[where.expand_as(d)] if where.shape != d.shape else d[where]
    return d.max().item() if d.numel() else 0.0


def their_policies(learner, batch):
    """Their pi and rho over every stored slot, masked and renormalised as dmac_learner.py:518-529 does."""
    out = []
    for mac in (learner.mac, learner.target_mac):
        with torch.no_grad():
            mac.init_hidden(batch.batch_size)
            probs = torch.stack([mac.forward(batch, t=t) for t in range(batch.max_seq_length)], dim=1)
        avail = batch["avail_actions"]
        probs[avail == 0] = 0
        probs = probs / probs.sum(-1, keepdim=True)
        probs[avail == 0] = 0
        out.append(probs)
    return out


def sample_fixed_actions(log_pi_steps, step_mask, generator):
    """Actions for the actor step drawn once from pi at the real steps (0 elsewhere): [B, T, n]."""
    probs = log_pi_steps.exp().reshape(-1, log_pi_steps.shape[-1])
    actions = torch.multinomial(probs, 1, generator=generator).view(log_pi_steps.shape[:-1])
    return torch.where(step_mask, actions, torch.zeros_like(actions))


# ---------------------------------------------------------------------------------------------------------
def compare_one_update(title, learner, ours, our_callbacks, py_batch, td_batch, generator, aligned_bootstrap=True):
    say("")
    say("=" * 100)
    say(title)
    say("=" * 100)
    B, L = py_batch.batch_size, py_batch.max_seq_length
    T = L - 1
    n = learner.n_agents
    episodes = ours.episode_batch(td_batch)

    # masks as their learner builds them
    terminated = py_batch["terminated"][:, :-1].float()
    mask = py_batch["filled"][:, :-1].float().clone()
    mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1])
    terminated_all = py_batch["terminated"].float()
    mask_all = py_batch["filled"].float().clone()
    mask_all[:, 1:] = mask_all[:, 1:] * (1 - terminated_all[:, :-1])
    step_mask = mask[..., 0].bool()  # [B, T]
    mask_all_b = mask_all[..., 0].bool()  # [B, L]
    say(f"batch: B={B} L={L}; their actor/critic mask == our filled[:, :-1]: "
        f"{torch.equal(step_mask, episodes.joint_step_mask)}; real steps {int(step_mask.sum())}; "
        f"their mask_all (incl. bootstrap slots kept for the target) {int(mask_all_b.sum())}")
    avail = py_batch["avail_actions"].bool()
    avail_valid = avail & mask_all_b[..., None, None]

    # 0. forward passes before the update
    with torch.no_grad():
        their_pi, their_rho = their_policies(learner, py_batch)
        our_log_pi = ours.log_policy(ours.actor, episodes)
        our_log_rho = ours.log_rho(episodes)
        their_q = learner.critic1(learner.critic1._build_inputs(py_batch, B, L))
        our_q = ours.individual_q(ours.critic, episodes)
        their_k = learner.mixer1.k(py_batch["state"])
        our_k = ours.mixer.k(episodes.state)
        their_qt = learner.target_critic1(learner.target_critic1._build_inputs(py_batch, B, L))
        our_qt = ours.individual_q(ours.target_critic, episodes)
    say("-- before the update (same weights) --")
    say(f"log pi  (valid slots incl. kept bootstrap slots, available actions): max|diff| = {mx(their_pi.log(), our_log_pi, avail_valid):.3e}")
    say(f"log rho (same):                                                      max|diff| = {mx(their_rho.log(), our_log_rho, avail_valid):.3e}")
    say(f"Q_i(s,o_i,.) online critic (valid slots): {mx(their_q, our_q, mask_all_b[..., None, None]):.3e}; "
        f"target critic: {mx(their_qt, our_qt, mask_all_b[..., None, None]):.3e}")
    say(f"k_i(s) mixer (valid slots): {mx(their_k, our_k, mask_all_b[..., None]):.3e}")

    # fixed actor actions (replace both sides' sampling)
    fixed = sample_fixed_actions(our_log_pi[:, :T], step_mask[..., None], generator)
    FixedCategorical.actions = fixed
    ours.actor_actions = lambda eps, log_pi, _fixed=fixed: _fixed
    BOOTSTRAP["actions"] = py_batch["actions"][..., 0].clone() if aligned_bootstrap else None

    # one update on each side
    CAPTURE.clear()
    CLIPS.clear()
    sys.setprofile(CAPTURE)
    try:
        their_update(learner, py_batch)
        our_update(ours, our_callbacks, episodes)
    finally:
        sys.setprofile(None)
    ta = CAPTURE.store["their_actor"][-1]
    tc = CAPTURE.store["their_critic"][-1]
    oa = CAPTURE.store["our_actor"][-1]
    oct_ = CAPTURE.store["our_critic_targets"][-1]
    ort = CAPTURE.store["our_regularized_targets"][-1]
    opt = CAPTURE.store["our_per_timestep"][-1]

    # 1. the actor step
    say("-- actor step (same sampled actions) --")
    t_pi = ta["mac_out"].detach()  # masked, renormalised pi [B, T, n, A]
    t_rho = ta["target_mac_out"].detach()
    av_T = avail[:, :T] & step_mask[..., None, None]
    say(f"log pi  at the actor step (real steps): {mx(t_pi.log(), oa['log_pi'][:, :T].detach(), av_T):.3e}")
    say(f"log rho at the actor step (real steps): {mx(t_rho.log(), oa['log_rho'][:, :T], av_T):.3e}")
    say(f"actions used: theirs == ours: {torch.equal(ta['actions'][..., 0], oa['actions'])}")
    m3 = step_mask[..., None].expand(B, T, n)
    say(f"Q_i online critic for the actor: {mx(ta['q_vals'], oa['q_values'], step_mask[..., None, None]):.3e}; "
        f"k_i(s): {mx(ta['coe'].view(B, T, n), oa['k'], m3):.3e}")
    their_adv = ta["final_adv"].view(B, T, n)
    say(f"advantage A_i (real agent-steps): max|diff| = {mx(their_adv, oa['advantage'], m3):.3e}  "
        f"(max|A| {their_adv[m3].abs().max().item():.3e})")
    their_pen = (ta["curr_bias"]).view(B, T, n)  # omega (log ratio - KL)
    say(f"  penalty omega*(log pi/rho - KL) theirs max|.| {their_pen[m3].abs().max().item():.3e} "
        "(0 while rho == pi, i.e. on the first update)")
    say(f"actor loss: theirs {ta['coma_loss'].item():.15e} ours {oa['actor_loss'].item():.15e} |diff| "
        f"{abs(ta['coma_loss'].item() - oa['actor_loss'].item()):.3e}")

    clips_t = [c for c in CLIPS if c["side"] == "theirs"]
    clips_o = [c for c in CLIPS if c["side"] == "ours"]
    say(f"clip calls: theirs {len(clips_t)} (1 actor + {len(clips_t) - 1} critic), ours {len(clips_o)}")
    their_agent = dict(learner.mac.agent.named_parameters())
    our_actor = dict(ours.actor.named_parameters())
    ca_t, ca_o = clips_t[0], clips_o[0]
    d_pre = max((ca_t["pre"][id(their_agent[t])] - ca_o["pre"][id(our_actor[o])]).abs().max().item() for t, o in AGENT_MAP.items())
    d_post = max((ca_t["post"][id(their_agent[t])] - ca_o["post"][id(our_actor[o])]).abs().max().item() for t, o in AGENT_MAP.items())
    say(f"agent gradient: norm theirs {ca_t['norm']:.12e} ours {ca_o['norm']:.12e}; max|diff| pre-clip {d_pre:.3e}, "
        f"post-clip {d_post:.3e}; clip {ca_t['max_norm']} vs {ca_o['max_norm']}; params clipped {ca_t['n_params']} vs {ca_o['n_params']}")
    if not np.isfinite(ca_t["norm"]) or not np.isfinite(ca_o["norm"]):
        nan_t = {t: bool(torch.isnan(ca_t['pre'][id(their_agent[t])]).any()) for t in AGENT_MAP}
        say(f"  NON-FINITE agent gradient: theirs {ca_t['norm']} ours {ca_o['norm']}; NaN in their grads: {nan_t}")

    # 2. the critic: pi, rho, log ratios, targets
    say("-- critic targets (after the actor step and rho's soft update) --")
    c_pi, c_rho = tc["pi"], tc["target_pi"]
    av_all = avail & mask_all_b[..., None, None]
    say(f"log pi  at the critic step (valid slots): {mx(c_pi.log(), oct_['log_pi'], av_all):.3e}")
    say(f"log rho at the critic step (valid slots): {mx(c_rho.log(), oct_['log_rho'], av_all):.3e}")
    say(f"  (rho moved: max|log pi - log rho| theirs {(c_pi.log() - c_rho.log())[av_all].abs().max().item():.3e})")
    boot = oct_["actions"]
    real_boot = ~episodes.filled & mask_all_b  # bootstrap slots their target reads (non-terminated episodes)
    if real_boot.any():
        same = torch.equal(boot[real_boot], py_batch["actions"][..., 0][real_boot])
        say(f"bootstrap actions at the kept bootstrap slots ({int(real_boot.sum())} slots): ours == their stored runner action: {same}"
            f"{' (aligned on purpose)' if aligned_bootstrap else ''}")
    their_ratio = tc["bias_sum"][:, 1:, 0] * learner.args.reward_scale  # joint log pi/rho at slots 1..L-1
    vm = mask_all_b[:, 1:]
    say(f"joint log pi/rho (a_t+1) at slots 1..L-1 (valid): {mx(their_ratio, ort['next_log_ratio'], vm):.3e}")
    say(f"target Q_tot(s_t, a_t) from target critic+mixer (valid slots): {mx(tc['targets_taken'][..., 0], ort['values'], mask_all_b):.3e}")
    their_targets = tc["target_q"][..., 0]
    our_targets = oct_["targets"] if "targets" in oct_ else None
    if our_targets is None:
        our_targets = CAPTURE.store["our_regularized_targets"][-1]["targets"]
    say(f"critic targets y_t (real steps): max|diff| = {mx(their_targets, our_targets, step_mask):.3e}  "
        f"(max|y| {their_targets[step_mask].abs().max().item():.3e})")
    # where the difference lives: last real step of each episode
    last = step_mask & ~torch.cat([step_mask[:, 1:], torch.zeros_like(step_mask[:, :1])], 1)
    say(f"  at the last real step of each episode: {mx(their_targets, our_targets, last):.3e}; elsewhere: "
        f"{mx(their_targets, our_targets, step_mask & ~last):.3e}")

    # 3. per-timestep critic losses and the first critic step's gradients
    say("-- critic steps --")
    td = tc["masked_td_error1"]  # [B, T', 1, 1] list of (q - y) * mask per step
    their_losses = torch.stack([(td[:, i] ** 2).sum() / mask[:, i].sum() for i in range(td.shape[1])])
    our_losses = torch.stack(opt["losses"])
    say(f"critic steps: theirs {td.shape[1]} ours {our_losses.numel()}; critic_training_steps {learner.critic_training_steps} "
        f"ours.critic_steps {ours.critic_steps}")
    if their_losses.numel() == our_losses.numel():
        rel = ((their_losses - our_losses).abs() / their_losses.abs().clamp(min=1e-300)).max().item()
        say(f"per-timestep critic losses: max|diff| = {(their_losses - our_losses).abs().max().item():.3e} (max rel {rel:.3e}); "
            f"theirs {[f'{x:.6g}' for x in their_losses.tolist()]}")
    their_crit = {**{f"critic.{k}": v for k, v in learner.critic1.named_parameters()},
                  **{f"mixer.{k}": v for k, v in learner.mixer1.named_parameters()}}
    our_crit = {**{f"critic.{k}": v for k, v in ours.critic.named_parameters()},
                **{f"mixer.{k}": v for k, v in ours.mixer.named_parameters()}}
    cmap = {**{f"critic.{t}": f"critic.{o}" for t, o in CRITIC_MAP.items()}, **{f"mixer.{t}": f"mixer.{o}" for t, o in MIXER_MAP.items()}}
    c1_t, c1_o = clips_t[1], clips_o[1]
    d_pre = max((c1_t["pre"][id(their_crit[t])] - c1_o["pre"][id(our_crit[o])]).abs().max().item() for t, o in cmap.items())
    d_post = max((c1_t["post"][id(their_crit[t])] - c1_o["post"][id(our_crit[o])]).abs().max().item() for t, o in cmap.items())
    say(f"first critic step gradient (critic+mixer): norm theirs {c1_t['norm']:.12e} ours {c1_o['norm']:.12e}; "
        f"max|diff| pre-clip {d_pre:.3e} post-clip {d_post:.3e}; params in clip: theirs {c1_t['n_params']} "
        f"({c1_t['n_with_grad']} with grad) ours {c1_o['n_params']} ({c1_o['n_with_grad']} with grad)")
    norms_t = [c["norm"] for c in clips_t[1:]]
    norms_o = [c["norm"] for c in clips_o[1:]]
    if len(norms_t) == len(norms_o):
        say(f"all critic-step grad norms: max|diff| {max(abs(a - b) for a, b in zip(norms_t, norms_o)):.3e}; "
            f"clipped steps (norm > 10): theirs {sum(x > 10 for x in norms_t)} ours {sum(x > 10 for x in norms_o)}")

    # 4. weights after the whole update
    say("-- weights after the whole update --")
    for label, d in weight_diffs(learner, ours).items():
        say(f"  {label:14s} max|diff| = {d:.3e}")
    return dict(their_targets=their_targets, our_targets=our_targets, step_mask=step_mask)


def make_synthetic(eps_a, n_actions, seed=1):
    """Variants of the collected episodes that the game itself never produces, in both formats alike:
    early termination + padding, time-limit truncation, unavailable actions."""
    g = torch.Generator().manual_seed(seed)
    eps = [copy.deepcopy(e) for e in eps_a]

    def cut(e, k):
        e["obs"], e["state"], e["avail"], e["actions"] = e["obs"][: k + 1], e["state"][: k + 1], e["avail"][: k + 1], e["actions"][: k + 1]
        e["reward"], e["terminated"] = e["reward"][:k], e["terminated"][:k].clone()
        e["terminated"][:] = 0
        e["terminated"][k - 1] = 1

    cut(eps[0], 4)
    cut(eps[1], 7)
    cut(eps[6], 2)
    for b in (2, 3):  # time limit: the last step is not terminal (PyMARL stores terminated False, info episode_limit)
        eps[b]["terminated"] = eps[b]["terminated"].clone()
        eps[b]["terminated"][-1] = 0
    for b in (4, 5, 6, 7):  # some actions unavailable (never the stored one)
        e = eps[b]
        avail = e["avail"].clone()
        for t in range(avail.shape[0]):
            for i in range(avail.shape[1]):
                if torch.rand(1, generator=g).item() < 0.5:
                    choices = [a for a in range(n_actions) if a != int(e["actions"][t, i])]
                    avail[t, i, choices[int(torch.randint(len(choices), (1,), generator=g))]] = 0
        e["avail"] = avail
    return eps


OBS_DIM = None


def main():
    global OBS_DIM
    np.random.seed(0)
    torch.manual_seed(0)
    env = PymarlEnv(env="stochastic_game", env_kwargs=dict(GAME), seed=0)
    env_info = env.get_env_info()
    OBS_DIM = env_info["obs_shape"]
    args = their_args(env_info)
    say(f"env_info {env_info}; their omega = 1/reward_scale = {1 / args.reward_scale}; lr {args.lr} c_lr {args.c_lr} "
        f"td_lambda {args.td_lambda} gamma {args.gamma} tau {args.tau} target_update_interval {args.target_update_interval} "
        f"grad_norm_clip {args.grad_norm_clip} optim alpha {args.optim_alpha} eps {args.optim_eps} "
        f"state_mixer {args.state_mixer} use_DOP_critic {args.use_DOP_critic} DOP_func {args.DOP_func} "
        f"mask_before_softmax {args.mask_before_softmax} soft_update_critic {args.soft_update_critic}")
    scheme, groups, preprocess, buffer, mac, learner, logger = build_theirs(args)

    ours, our_opts, our_callbacks = build_ours(env.info)
    say(f"our settings: omega {ours.omega} tau {ours.tau} copy_every {ours.target_critic_copy_every} td_lambda {ours.td_lambda} "
        f"gamma {ours.gamma} clip {ours.grad_clip_norm} epsilon {ours.epsilon}; callbacks "
        f"{[(c.source, c.target, c.counter, c.every) for c in our_callbacks]}")
    say(f"optimisers: theirs actor {learner.p_optimiser.defaults['lr']}/{learner.p_optimiser.defaults['alpha']}/"
        f"{learner.p_optimiser.defaults['eps']} critic {learner.c_optimiser1.defaults['lr']}; ours critic "
        f"{our_opts[0].defaults['lr']}/{our_opts[0].defaults['alpha']}/{our_opts[0].defaults['eps']} actor {our_opts[1].defaults['lr']}; "
        f"momentum {learner.p_optimiser.defaults['momentum']}/{our_opts[1].defaults['momentum']} centered "
        f"{learner.p_optimiser.defaults['centered']}/{our_opts[1].defaults['centered']}")

    # input layouts
    their_agent_in = mac._get_input_shape(buffer.scheme)
    say(f"agent input: theirs {their_agent_in} = obs {OBS_DIM} + last action {args.n_actions} + id {args.n_agents} "
        f"(basic_controller.py:_build_inputs order obs, last action, id); ours encoder in {ours.actor.encoder.in_features} "
        f"(networks/agents.py:agent_inputs order obs, last action, id)")
    say(f"critic input: theirs {learner.critic1.fc1.in_features} (critics/dmac.py:_build_inputs state, obs, id); ours "
        f"{ours.critic.trunk[0].in_features} (networks/critics.py:individual_critic_inputs state, obs, id)")
    say("weights theirs -> ours:")
    copy_weights(learner, ours)
    say(f"  after copy: {weight_diffs(learner, ours)}")

    # collect 12 episodes with their runner (their policy; runner's bootstrap action at the last entry)
    runner = r_REGISTRY[args.runner](args=args, logger=logger)
    runner.env = env
    runner.episode_limit = env.episode_limit
    runner.setup(scheme=scheme, groups=groups, preprocess=preprocess, mac=mac)
    for _ in range(N_EPISODES):
        buffer.insert_episode_batch(runner.run(test_mode=False))
    sample = buffer[:N_EPISODES]  # what buffer.sample(12) returns when it holds 12 (its can_sample wants burn_in_period)
    sample = sample[:, : sample.max_t_filled()]
    batch_a = to_float64(sample)
    L = batch_a.max_seq_length
    eps_a = canonical_from_pymarl(batch_a)
    rebuilt = to_float64(to_pymarl(eps_a, L, scheme, groups, preprocess))
    same = all(torch.equal(batch_a[k], rebuilt[k]) for k in batch_a.data.transition_data)
    say(f"collected {N_EPISODES} episodes with their EpisodeRunner: L = {L}, lengths {[e['reward'].shape[0] for e in eps_a]}, "
        f"returns {[round(float(e['reward'].sum()), 3) for e in eps_a]}; rebuilt-from-canonical == runner batch: {same}")
    td_a = to_ours(eps_a, L, args.n_agents, args.n_actions)

    # the same two learners on batch A, then on a synthetic batch B
    gen = torch.Generator().manual_seed(123)
    their_nets = ("critic1", "mixer1", "target_critic1", "target_mixer1", "critic2", "mixer2", "target_critic2", "target_mixer2")
    theirs_snapshot = {name: copy.deepcopy(getattr(learner, name).state_dict()) for name in their_nets}
    theirs_snapshot["mac"] = copy.deepcopy(learner.mac.agent.state_dict())
    theirs_snapshot["target_mac"] = copy.deepcopy(learner.target_mac.agent.state_dict())
    ours_snapshot = copy.deepcopy(ours.state_dict())
    our_opt_snapshot = [copy.deepcopy(o.state_dict()) for o in our_opts]

    compare_one_update("UPDATE 1 on batch A: 12 collected episodes of the reduced game (all full length, terminated)",
                       learner, ours, our_callbacks, batch_a, td_a, gen)
    compare_one_update("UPDATE 2 on batch A (continuing: rho != pi now, so the divergence terms are live)",
                       learner, ours, our_callbacks, batch_a, td_a, gen)

    # batch B (synthetic) on fresh copies of the initial weights
    def reset():
        for name in their_nets:
            getattr(learner, name).load_state_dict(theirs_snapshot[name])
        learner.mac.agent.load_state_dict(theirs_snapshot["mac"])
        learner.target_mac.agent.load_state_dict(theirs_snapshot["target_mac"])
        learner.critic_training_steps = learner.last_target_update_step = learner.last_target_update_episode = 0
        learner.agent_params = list(learner.mac.parameters())
        learner.critic_params1 = list(learner.critic1.parameters()) + list(learner.mixer1.parameters())
        learner.p_optimiser = torch.optim.RMSprop(params=learner.agent_params, lr=args.lr, alpha=args.optim_alpha, eps=args.optim_eps)
        learner.c_optimiser1 = torch.optim.RMSprop(params=learner.critic_params1, lr=args.c_lr, alpha=args.optim_alpha, eps=args.optim_eps)
        ours.load_state_dict(ours_snapshot)
        ours.critic_steps = 0
        new_opts = ours.configure_optimizers()
        for o, s in zip(new_opts, our_opt_snapshot):
            o.load_state_dict(s)
        our_opts[:] = new_opts
        for c in our_callbacks:
            c.updates, c.copied_at = 0, 0
        assert max(weight_diffs(learner, ours).values()) == 0.0

    eps_b = make_synthetic(eps_a, args.n_actions)
    L_b = max(e["reward"].shape[0] for e in eps_b) + 1
    batch_b = to_float64(to_pymarl(eps_b, L_b, scheme, groups, preprocess))
    td_b = to_ours(eps_b, L_b, args.n_agents, args.n_actions)
    say("")
    say(f"batch B: lengths {[e['reward'].shape[0] for e in eps_b]}; terminated at the end "
        f"{[int(e['terminated'][-1]) for e in eps_b]} (0 = time limit); eps 4-7 with some unavailable actions")
    # their padding: avail_actions 0 (zeros of the buffer); ours: all available
    reset()
    res_b = compare_one_update("UPDATE 1 on batch B (synthetic: early termination + padding, time-limit ends, unavailable actions), "
                               "our bootstrap actions aligned to their runner's", learner, ours, our_callbacks, batch_b, td_b,
                               torch.Generator().manual_seed(7))
    compare_one_update("UPDATE 2 on batch B (continuing, aligned bootstrap: rho != pi with padding and unavailable actions)",
                       learner, ours, our_callbacks, batch_b, td_b, torch.Generator().manual_seed(8))
    reset()
    res_b2 = compare_one_update("UPDATE 1 on batch B, our bootstrap actions sampled by us (as in training)", learner, ours,
                                our_callbacks, batch_b, td_b, torch.Generator().manual_seed(7), aligned_bootstrap=False)
    del res_b, res_b2

    # many updates on batch A: drift, rho, and when each side copies its target critic
    say("")
    say("=" * 100)
    say("MANY UPDATES on batch A (fixed actions per update, shared): weight drift and target-critic copies")
    say("=" * 100)
    reset()
    CLIP_CAPTURE[0] = False
    CAPTURE.enabled = False
    episodes_a = ours.episode_batch(td_a)
    gen = torch.Generator().manual_seed(99)
    step_mask_a = episodes_a.joint_step_mask
    BOOTSTRAP["actions"] = batch_a["actions"][..., 0].clone()
    for u in range(1, 23):
        with torch.no_grad():
            log_pi = ours.log_policy(ours.actor, episodes_a)
        fixed = sample_fixed_actions(log_pi[:, : L - 1], step_mask_a[..., None], gen)
        FixedCategorical.actions = fixed
        ours.actor_actions = lambda eps, lp, _fixed=fixed: _fixed
        tc_before, oc_before = snapshot(learner.target_critic1), snapshot(ours.target_critic)
        their_update(learner, batch_a)
        our_update(ours, our_callbacks, episodes_a)
        d = weight_diffs(learner, ours)
        moved_t, moved_o = changed(tc_before, learner.target_critic1), changed(oc_before, ours.target_critic)
        if u <= 2 or u >= 19 or moved_t > 0 or moved_o > 0:
            say(f"update {u:2d}: critic steps theirs {learner.critic_training_steps} ours {ours.critic_steps}; target critic "
                f"copied: theirs {moved_t > 0} ours {moved_o > 0}; max|diff| " + " ".join(f"{k} {v:.1e}" for k, v in d.items()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "update_check.out")
        with open(path, "w") as f:
            f.write("\n".join(OUT) + "\n")
