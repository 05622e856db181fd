"""Update-level equivalence: the DMAC authors' FOP baseline (FOP_Learner, PKU-RL/FOP-DMAC-MACPF @ 67aacc4, patched)
against dmac-lightning's Fop (configs/algorithms/authors/fop.yaml), on the same weights and the same batch, stage by
stage, in float64. Structure and helpers follow compare_update.py (the DOP+DMAC check) in this folder.

Run (their venv, our package on the path):
    cd /work/peers/authors/FOP-DMAC-MACPF/src && AUTHORS_SRC=$PWD DMAC_ROOT=/work/main PYTHONPATH=/work/main:. \
    OMP_NUM_THREADS=1 ../../venv/bin/python -W ignore /work/main/docs/results/as_published/authors_peer/update_check_fop.py [sg|smax|all]
Its output at the commit of this file: update_check_fop.out (beside it).

What it isolates. Since 1bdee46 our FOPMixer has a query hypernetwork per attention head, as theirs
(selector_extractors, mixers/fop.py L29-32): every one of their mixer parameters has a counterpart in ours
except their key_extractors, and their per-head query layers are compared untied, as published. The known
differences, each shown on its own:
  (a) attention keys: theirs from each ally's block of the state (unit_dim), ours from each agent's observation.
      Isolated by a monkeypatch of their FOPMixer.weight that feeds our observation keys (sections A..B, target
      copies); section C runs their keys as published.
  (b) gradient clip: theirs per critic+mixer pair, ours one joint clip over both pairs (section B, where it binds).
  (c) resolved at 1bdee46: the heads' query hypernetworks (ours used to share one hidden layer among the heads;
      the runs tied their per-head first layers to match). Now untied on both sides and compared per head.
  (d) attention regulariser: theirs averaged over padded rows too, ours over real steps (A vs A' on SMAX).
  (e) unavailable actions: their policy gives them 1e-10 (renormalised), ours exactly 0 (~1e-9 on SMAX).
  (f) target copies: their episode counter runs one behind ours (TARGET COPIES).

Nothing under /work/main is modified: our module is driven from outside (plain torch optimisers from its
configure_optimizers(), as benchmarks/updates.py:time_bare does; a stand-in trainer that only carries env_steps and
episodes; its TargetNetworkUpdate callbacks called by hand). Their code is not edited either; everything below that
changes their behaviour is a monkeypatch, named where it is made, and used only in the variants that say so.
"""

from __future__ import annotations

import collections
import collections.abc
import copy
import logging
import os
import sys
import time
import types
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
import yaml

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

SRC = os.environ.get("AUTHORS_SRC", "/work/peers/authors/FOP-DMAC-MACPF/src")
ROOT = os.environ.get("DMAC_ROOT", "/work/main")
sys.path[:0] = [SRC, ROOT]

# The episode and batch conversions are update_check.py's (beside this file): the same episodes in their layout and ours.
from update_check import canonical_from_pymarl, recursive_update, to_float64, to_ours, to_pymarl  # noqa: E402

# theirs
from components.episode_buffer import EpisodeBatch as PyEpisodeBatch, ReplayBuffer  # noqa: E402
from components.transforms import OneHot  # noqa: E402
from controllers import REGISTRY as mac_REGISTRY  # noqa: E402
from runners import REGISTRY as r_REGISTRY  # noqa: E402
import learners.fop_learner as fop_learner_mod  # noqa: E402
from learners.fop_learner import FOP_Learner  # noqa: E402
from modules.mixers.fop import FOPMixer as TheirMixer  # noqa: E402

# ours
from tensordict import TensorDict  # noqa: E402
import dmac_lightning.algorithms.fop as our_fop_mod  # noqa: E402
from dmac_lightning.algorithms import Fop  # noqa: E402
from dmac_lightning.networks import FOPMixer as OurMixer  # noqa: E402
from dmac_lightning.returns import lambda_returns  # noqa: E402
from dmac_lightning.targets import TargetNetworkUpdate  # noqa: E402
from benchmarks.peers.pymarl_env import PymarlEnv  # noqa: E402

ENVS = {
    "sg": dict(env="stochastic_game", env_kwargs={"n_states": 10, "n_agents": 3, "n_actions": 3, "episode_limit": 10, "game_seed": 0},
               map_name="reduced_game", unit_dim=6, n_episodes=8),
    "smax": dict(env="smax", env_kwargs={"map_name": "3m", "max_steps": 100}, map_name="smax_3m", unit_dim=None, n_episodes=8),
}
PRESET = os.path.join(ROOT, "configs", "algorithms", "authors", "fop.yaml")
T_ENV = 20_000          # alpha = 0.4 on both sides
EPISODE_NUM = 100       # their episode counter at the update (no target copy)
OUT: list[str] = []


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    OUT.append(line)


# ---------------------------------------------------------------------------------------------------------
# their args, as main.py + run.py build them
def their_args(spec: dict, env_info: dict) -> SimpleNamespace:
    with open(os.path.join(SRC, "config", "default.yaml")) as f:
        config = yaml.load(f, Loader=yaml.FullLoader)
    with open(os.path.join(SRC, "config", "algs", "fop.yaml")) as f:
        config = recursive_update(config, yaml.load(f, Loader=yaml.FullLoader))
    config.update(env="ours", env_args={"env": spec["env"], "env_kwargs": dict(spec["env_kwargs"]), "seed": 0,
                                        "map_name": spec["map_name"]},
                  use_cuda=False, seed=0, unit_dim=spec["unit_dim"])
    args = SimpleNamespace(**config)
    args.device = "cpu"
    args.episode_limit = env_info["episode_limit"]
    args.n_agents = env_info["n_agents"]
    args.n_actions = env_info["n_actions"]
    args.state_shape = env_info["state_shape"]
    # run.py:91-99 (patched run.py:84): unit_dim from agent_features where the env names them
    if "agent_features" in env_info:
        args.unit_dim = len(env_info["agent_features"])
    return args


class DummyLogger:
    def __init__(self):
        self.console_logger = logging.getLogger("their_learner")
        self.console_logger.setLevel(logging.WARNING)
        self.stats = collections.defaultdict(list)

    def log_stat(self, key, value, t):
        self.stats[key].append(value)


def their_scheme(args, obs_dim):
    scheme = {
        "state": {"vshape": args.state_shape},
        "obs": {"vshape": obs_dim, "group": "agents"},
        "actions": {"vshape": (1,), "group": "agents", "dtype": torch.long},
        "avail_actions": {"vshape": (args.n_actions,), "group": "agents", "dtype": torch.int},
        "avail_agents": {"vshape": (args.n_agents,), "group": "agents", "dtype": torch.int},
        "reward": {"vshape": (1,)},
        "terminated": {"vshape": (1,), "dtype": torch.uint8},
    }
    groups = {"agents": args.n_agents}
    preprocess = {"actions": ("actions_onehot", [OneHot(out_dim=args.n_actions)])}
    return scheme, groups, preprocess


# ---------------------------------------------------------------------------------------------------------
# their attention keys: monkeypatch of FOPMixer.weight (mixers/fop.py:61-93). A mixer instance with
# keys_from == "obs" builds its keys from each agent's observation (ours) instead of state[:, i*unit_dim:(i+1)*unit_dim]
# (L64-66); with REG["mask"] set, the attention regulariser (L91) averages over the real rows only (ours).
# Everything else is their code verbatim.
OBS = {"obs": None}
REG = {"mask": None}
_orig_weight = TheirMixer.weight


def patched_weight(self, agent_qs, states):
    keys_from = getattr(self, "keys_from", "state")
    if keys_from == "state" and REG["mask"] is None:
        return _orig_weight(self, agent_qs, states)
    T = states.shape[1]
    states = states.reshape(-1, self.state_dim)
    if keys_from == "obs":
        obs = OBS["obs"][:, :T]
        unit_states = obs.reshape(-1, self.n_agents, obs.shape[-1])
    else:
        unit_states = states[:, : self.unit_dim * self.n_agents].reshape(-1, self.n_agents, self.unit_dim)
    unit_states = unit_states.permute(1, 0, 2)
    agent_qs = agent_qs.reshape(-1, 1, self.n_agents)
    head_selectors = [sel_ext(states) for sel_ext in self.selector_extractors]
    head_keys = [[k_ext(enc) for enc in unit_states] for k_ext in self.key_extractors]
    head_attend_logits = []
    head_attend_weights = []
    for head_key, head_selector in zip(head_keys, head_selectors):
        attend_logits = torch.matmul(head_selector.reshape(-1, 1, self.embed_dim), torch.stack(head_key).permute(1, 2, 0))
        scaled_attend_logits = attend_logits / np.sqrt(self.embed_dim)
        attend_weights = F.softmax(scaled_attend_logits, dim=2)
        head_attend_logits.append(attend_logits)
        head_attend_weights.append(attend_weights)
    head_attend = torch.stack(head_attend_weights, dim=1)
    head_attend = head_attend.reshape(-1, self.n_head, self.n_agents)
    head_attend = torch.sum(head_attend, dim=1)
    if REG["mask"] is None:
        attend_mag_regs = self.attend_reg_coef * sum((logit ** 2).mean() for logit in head_attend_logits)
    else:
        m = REG["mask"]  # [B, L-1]: the online mixers' rows; the target mixers (T = L) get a zero column (their reg is unused)
        if m.shape[1] < T:
            m = torch.cat([m, torch.zeros_like(m[:, : T - m.shape[1]])], 1)
        rows = m[:, :T].reshape(-1).bool()
        attend_mag_regs = self.attend_reg_coef * sum((logit[rows] ** 2).mean() for logit in head_attend_logits)
    return head_attend, attend_mag_regs


TheirMixer.weight = patched_weight


class FixedCategorical:
    """Stands in for torch.distributions.Categorical in fop_learner.py (L141, the next-action draw)."""
    actions = None

    def __init__(self, probs=None, **kw):
        self.probs = probs

    def sample(self):
        return FixedCategorical.actions.clone()


fop_learner_mod.Categorical = FixedCategorical
_our_sample = our_fop_mod.sample


def _our_fixed_sample(log_pi):  # our Fop.critic_targets (fop.py:124): next_actions = sample(log_pi)
    return FixedCategorical.actions.clone()


our_fop_mod.sample = _our_fixed_sample


# ---------------------------------------------------------------------------------------------------------
# capture of function locals (and return values) at return
class LocalsCapture:
    def __init__(self, functions: dict):
        self.codes = {}
        for name, fs in functions.items():
            for f in (fs if isinstance(fs, (list, tuple)) else [fs]):
                self.codes[f.__code__] = name
        self.store = collections.defaultdict(list)
        self.enabled = True

    def __call__(self, frame, event, arg):
        if self.enabled and event == "return" and frame.f_code in self.codes:
            d = dict(frame.f_locals)
            d["__return__"] = arg
            self.store[self.codes[frame.f_code]].append(d)

    def clear(self):
        self.store.clear()


CAPTURE = LocalsCapture({
    "their_actor": FOP_Learner.train_actor, "their_critic": FOP_Learner.train_critic,
    "their_mixer": TheirMixer.forward, "their_weight": patched_weight, "their_lambda": TheirMixer.lambda_weight,
    "our_actor": Fop.actor_step, "our_actor_objective": Fop.actor_objective, "our_critic": Fop.critic_step,
    "our_targets": Fop.critic_targets, "our_target_values": Fop.target_values, "our_individual_q": Fop.individual_q,
    "our_mixer": OurMixer.forward, "our_attention": OurMixer.attention, "our_lambda": OurMixer.lambda_weights,
    "our_lambda_returns": lambda_returns,
})

SIDE = ["none"]
CLIPS: list = []
_orig_clip = torch.nn.utils.clip_grad_norm_


def _clip_wrap(parameters, max_norm, *a, **k):
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    pre = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    norm = _orig_clip(params, max_norm, *a, **k)
    post = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    CLIPS.append(dict(side=SIDE[0], max_norm=max_norm, n_params=len(params), n_with_grad=len(pre), ids={id(p) for p in params},
                      pre=pre, post=post, norm=float(norm)))
    return norm


torch.nn.utils.clip_grad_norm_ = _clip_wrap


# ---------------------------------------------------------------------------------------------------------
# weight mapping theirs -> ours
AGENT_MAP = {
    "fc1.weight": "encoder.weight", "fc1.bias": "encoder.bias",
    "rnn.weight_ih": "rnn.weight_ih_l0", "rnn.weight_hh": "rnn.weight_hh_l0",
    "rnn.bias_ih": "rnn.bias_ih_l0", "rnn.bias_hh": "rnn.bias_hh_l0",
    "fc2.weight": "head.weight", "fc2.bias": "head.bias",
}
CRITIC_MAP = {
    "fc1.weight": "encoder.weight", "fc1.bias": "encoder.bias",
    **{f"rnn.{k}_l0": f"rnn.{k}_l0" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "fc2.weight": "head.weight", "fc2.bias": "head.bias",
}


def critic_build(d):
    """our critic parameter name -> tensor built from their name->tensor dict (weights or gradients)."""
    return {o: d[t] for t, o in CRITIC_MAP.items()}


def agent_build(d):
    return {o: d[t] for t, o in AGENT_MAP.items()}


class _Used(dict):
    """A dict that records which keys were read (to list their parameters with no counterpart)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def mixer_build(d, H, with_keys=True):
    """our FOPMixer parameters from theirs (mixers/fop.py L22-40 -> networks/mixers.py L83-92), weights or gradients
    alike (the map is linear). Per-head modules are stacked along the output dimension in our head order; each head's
    query hypernet: selector_extractors.h.0 -> query_hidden rows h*hypernet_dim.., selector_extractors.h.2.weight.T ->
    query_out[h]."""
    out = {
        "head_keys.weight": torch.cat([d[f"keys.{h}.weight"] for h in range(H)], 0),
        "head_keys.bias": torch.cat([d[f"keys.{h}.bias"] for h in range(H)], 0),
        "head_agents.weight": torch.cat([d[f"agents_extractors.{h}.weight"] for h in range(H)], 0),
        "head_agents.bias": torch.cat([d[f"agents_extractors.{h}.bias"] for h in range(H)], 0),
        "head_actions.weight": torch.cat([d[f"action_extractors.{h}.weight"] for h in range(H)], 0),
        "head_actions.bias": torch.cat([d[f"action_extractors.{h}.bias"] for h in range(H)], 0),
        "value.0.weight": d["V.0.weight"], "value.0.bias": d["V.0.bias"],
        "value.2.weight": d["V.2.weight"], "value.2.bias": d["V.2.bias"],
        "query_hidden.weight": torch.cat([d[f"selector_extractors.{h}.0.weight"] for h in range(H)], 0),
        "query_hidden.bias": torch.cat([d[f"selector_extractors.{h}.0.bias"] for h in range(H)], 0),
        "query_out": torch.stack([d[f"selector_extractors.{h}.2.weight"].T for h in range(H)], 0),
    }
    if with_keys:
        out["keys.weight"] = torch.cat([d[f"key_extractors.{h}.weight"] for h in range(H)], 0)
    return out


def named(module):
    return dict(module.named_parameters())


def their_pairs(learner):
    return {
        "actor": (learner.mac.agent, "agent"), "critic1": (learner.critic1, "critic"), "critic2": (learner.critic2, "critic"),
        "mixer1": (learner.mixer1, "mixer"), "mixer2": (learner.mixer2, "mixer"),
        "target_critic1": (learner.target_critic1, "critic"), "target_critic2": (learner.target_critic2, "critic"),
        "target_mixer1": (learner.target_mixer1, "mixer"), "target_mixer2": (learner.target_mixer2, "mixer"),
    }


def our_modules(ours):
    return {
        "actor": ours.actor, "critic1": ours.critics[0], "critic2": ours.critics[1], "mixer1": ours.mixers[0], "mixer2": ours.mixers[1],
        "target_critic1": ours.target_critics[0], "target_critic2": ours.target_critics[1],
        "target_mixer1": ours.target_mixers[0], "target_mixer2": ours.target_mixers[1],
    }


def build_for(kind, d, H, with_keys=True):
    if kind == "agent":
        return agent_build(d)
    if kind == "critic":
        return critic_build(d)
    return mixer_build(d, H, with_keys)


def copy_weights(learner, ours, H):
    """theirs -> ours for every pair; returns their parameters with no counterpart, per module."""
    ours_m = our_modules(ours)
    unmatched = {}
    for label, (tm, kind) in their_pairs(learner).items():
        tp = {k: v.detach() for k, v in named(tm).items()} if not label.startswith("target") else \
            {k: v.detach() for k, v in tm.state_dict().items()}
        tp = _Used(tp)
        built = build_for(kind, tp, H)
        op = named(ours_m[label]) if not label.startswith("target") else dict(ours_m[label].named_parameters())
        assert set(op) == set(built), (label, set(op) ^ set(built))
        for name, value in built.items():
            assert op[name].shape == value.shape, (label, name, op[name].shape, value.shape)
            with torch.no_grad():
                op[name].copy_(value)
        unmatched[label] = sorted(set(tp) - tp.used)
    return unmatched


def weight_diffs(learner, ours, H, with_keys=True):
    ours_m = our_modules(ours)
    out = {}
    for label, (tm, kind) in their_pairs(learner).items():
        tp = {k: v.detach() for k, v in tm.state_dict().items()}
        built = build_for(kind, tp, H, with_keys)
        op = {k: v.detach() for k, v in ours_m[label].state_dict().items()}
        out[label] = max((built[k] - op[k]).abs().max().item() for k in built)
    return out


def per_param_diffs(learner, ours, H, label, with_keys=True):
    tm, kind = their_pairs(learner)[label]
    built = build_for(kind, {k: v.detach() for k, v in tm.state_dict().items()}, H, with_keys)
    op = {k: v.detach() for k, v in our_modules(ours)[label].state_dict().items()}
    return {k: (built[k] - op[k]).abs().max().item() for k in built}


def query_heads(learner, ours, H, snapshot=None, labels=("mixer1", "mixer2")):
    """Per-head query hypernets, theirs (selector_extractors.h) against ours (query_hidden rows h*hd.., query_out[h]):
    max|diff| per head, and, from their side, how far the update moved each head's weights (vs `snapshot`) and how far
    apart their heads are (each initialised on its own)."""
    ours_m = our_modules(ours)
    out = {}
    for label in labels:
        tm = their_pairs(learner)[label][0]
        om = ours_m[label]
        hd = om.query_out.shape[1]
        diffs, moved, apart = [], [], []
        w0 = tm.selector_extractors[0][0].weight.detach()
        for h in range(H):
            first, last = tm.selector_extractors[h][0], tm.selector_extractors[h][2]
            rows = slice(h * hd, (h + 1) * hd)
            diffs.append(max((first.weight.detach() - om.query_hidden.weight.detach()[rows]).abs().max().item(),
                             (first.bias.detach() - om.query_hidden.bias.detach()[rows]).abs().max().item(),
                             (last.weight.detach().T - om.query_out.detach()[h]).abs().max().item()))
            if snapshot is not None:
                sd = snapshot[label]
                moved.append(max((first.weight.detach() - sd[f"selector_extractors.{h}.0.weight"]).abs().max().item(),
                                 (first.bias.detach() - sd[f"selector_extractors.{h}.0.bias"]).abs().max().item(),
                                 (last.weight.detach() - sd[f"selector_extractors.{h}.2.weight"]).abs().max().item()))
            apart.append((first.weight.detach() - w0).abs().max().item())
        out[label] = dict(diffs=diffs, moved=moved, apart=max(apart))
    return out


def say_query_heads(learner, ours, H, snapshot, indent="  "):
    for label, r in query_heads(learner, ours, H, snapshot).items():
        say(f"{indent}{label} per-head queries (selector_extractors.h.0 vs query_hidden rows h, selector_extractors.h.2.weight.T "
            f"vs query_out[h]): max|diff| per head " + ", ".join(f"{x:.1e}" for x in r["diffs"])
            + (f"; their heads moved by the updates up to " + ", ".join(f"{x:.1e}" for x in r["moved"]) if r["moved"] else "")
            + f"; their first layers apart, max|head_h - head_0| {r['apart']:.2e}")


# ---------------------------------------------------------------------------------------------------------
# data: canonical episodes <-> their EpisodeBatch / our TensorDict (as compare_update.py)
# ---------------------------------------------------------------------------------------------------------
def load_preset():
    with open(PRESET) as f:
        cfg = yaml.safe_load(f)
    assert cfg["model"]["class_path"] == "dmac_lightning.algorithms.Fop"
    return dict(cfg["model"]["init_args"])


def build_ours(info, init_args):
    module = Fop(**init_args)
    module.configure_env(info)
    opts = module.configure_optimizers()
    module.optimizers = types.MethodType(lambda self: opts, module)
    module.manual_backward = types.MethodType(lambda self, loss: loss.backward(), module)
    module.recorded = collections.defaultdict(list)

    def record(self, **metrics):
        for k, v in metrics.items():
            self.recorded[k].append(float(v))

    module.record = types.MethodType(record, module)
    # env_steps / episodes come from trainer.datamodule (base.py:257-266): a stand-in with just those two
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(env_steps=0, episodes=0))
    callbacks = [c for c in module.configure_callbacks() if isinstance(c, TargetNetworkUpdate)]
    return module, opts, callbacks


def set_counters(ours, env_steps, episodes):
    ours._trainer.datamodule.env_steps = env_steps
    ours._trainer.datamodule.episodes = episodes


def reset_ours(ours, opts, callbacks, snapshot):
    ours.load_state_dict(snapshot)
    ours.critic_steps = 0
    opts[:] = ours.configure_optimizers()
    for c in callbacks:
        c.updates, c.copied_at = 0, 0


def make_their_learner(mac, scheme, args, snapshot, keys_from="obs", seed=0):
    """A fresh FOP_Learner, its networks as published (one query hypernet per head); weights from `snapshot` (their
    state dicts), except key_extractors when their shape differs (unit_dim keys: their own init, seeded)."""
    torch.manual_seed(seed)
    learner = FOP_Learner(mac, scheme, DummyLogger(), args)
    for name in ("mixer1", "mixer2"):
        getattr(learner, name).keys_from = keys_from
    for name in ("critic1", "critic2", "mixer1", "mixer2"):
        sd = snapshot[name]
        if keys_from != "obs":
            sd = {k: v for k, v in sd.items() if not k.startswith("key_extractors")}
        getattr(learner, name).load_state_dict(sd, strict=keys_from == "obs")
    for i in (1, 2):  # targets as their __init__ makes them (deepcopies), then the snapshot's target weights
        setattr(learner, f"target_critic{i}", copy.deepcopy(getattr(learner, f"critic{i}")))
        setattr(learner, f"target_mixer{i}", copy.deepcopy(getattr(learner, f"mixer{i}")))
        tsd = snapshot[f"target_critic{i}"]
        getattr(learner, f"target_critic{i}").load_state_dict(tsd)
        tsd = snapshot[f"target_mixer{i}"]
        if keys_from != "obs":
            own = getattr(learner, f"mixer{i}").state_dict()
            tsd = {k: (own[k] if k.startswith("key_extractors") else v) for k, v in tsd.items()}
        getattr(learner, f"target_mixer{i}").load_state_dict(tsd)
    mac.agent.load_state_dict(snapshot["agent"])
    learner.agent_params = list(mac.parameters())
    learner.critic_params1 = list(learner.critic1.parameters()) + list(learner.mixer1.parameters())
    learner.critic_params2 = list(learner.critic2.parameters()) + list(learner.mixer2.parameters())
    learner.p_optimiser = torch.optim.RMSprop(params=learner.agent_params, lr=args.lr, alpha=args.optim_alpha, eps=args.optim_eps)
    learner.c_optimiser1 = torch.optim.RMSprop(params=learner.critic_params1, lr=args.c_lr, alpha=args.optim_alpha, eps=args.optim_eps)
    learner.c_optimiser2 = torch.optim.RMSprop(params=learner.critic_params2, lr=args.c_lr, alpha=args.optim_alpha, eps=args.optim_eps)
    return learner


def their_masks(py_batch):
    terminated = py_batch["terminated"][:, :-1].float()
    mask = py_batch["filled"][:, :-1].float().clone()
    mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1])
    return mask  # [B, T, 1]


def mx(a, b, where=None):
    d = (a - b).abs()
    if where is not None:
        where = where.expand_as(d) if where.shape != d.shape else where
        d = d[where]
    return d.max().item() if d.numel() else 0.0


def fixed_draws(ours, episodes, generator):
    """[B, L, n] next actions drawn once from our current pi (available actions; padding: any)."""
    with torch.no_grad():
        log_pi = ours.log_policy(ours.actor, episodes)
    probs = log_pi.exp().reshape(-1, log_pi.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).view(log_pi.shape[:-1])


def run_update(learner, ours, callbacks, py_batch, td, fixed, t_env=T_ENV, episode_num=EPISODE_NUM):
    CAPTURE.clear()
    CLIPS.clear()
    FixedCategorical.actions = fixed
    OBS["obs"] = py_batch["obs"]
    sys.setprofile(CAPTURE)
    try:
        SIDE[0] = "theirs"
        learner.train(py_batch, t_env, episode_num)
        SIDE[0] = "ours"
        set_counters(ours, t_env, episode_num + 1)
        episodes = ours.episode_batch(td)
        ours.update_on(episodes)
        for c in callbacks:
            c.on_train_batch_end(None, ours, {"updated": True}, None, 0)
    finally:
        sys.setprofile(None)
        SIDE[0] = "none"
    return episodes


def grads_by_name(clip, modules: dict):
    """name -> pre-clip and post-clip grads of the parameters of `modules` (prefix -> module) in one clip call."""
    pre, post = {}, {}
    for prefix, m in modules.items():
        for k, p in m.named_parameters():
            if id(p) in clip["pre"]:
                pre[f"{prefix}.{k}"] = clip["pre"][id(p)]
                post[f"{prefix}.{k}"] = clip["post"][id(p)]
    return pre, post


def compare_grads(their_g, our_g, H, pair, with_keys=True):
    """max |diff| of one critic+mixer pair's gradients, theirs mapped onto our parameter shapes."""
    tc = {k[len("critic."):]: v for k, v in their_g.items() if k.startswith("critic.")}
    tm = {k[len("mixer."):]: v for k, v in their_g.items() if k.startswith("mixer.")}
    built = {**{f"critics.{pair}.{k}": v for k, v in critic_build(tc).items()},
             **{f"mixers.{pair}.{k}": v for k, v in mixer_build(tm, H, with_keys).items()}}
    diffs = {k: (v - our_g[k]).abs().max().item() for k, v in built.items() if k in our_g}
    missing = [k for k in built if k not in our_g]
    return diffs, missing


# ---------------------------------------------------------------------------------------------------------
def stage_report(title, learner, ours, py_batch, td, episodes, H, keys_from="obs", detailed=True, snapshot=None):
    """Stage-by-stage comparison of the last run_update. Returns a summary dict."""
    say("")
    say("=" * 110)
    say(title)
    say("=" * 110)
    B, L = py_batch.batch_size, py_batch.max_seq_length
    T = L - 1
    n, A = learner.n_agents, learner.n_actions
    mask = their_masks(py_batch)
    step_mask = mask[..., 0].bool()
    avail = py_batch["avail_actions"].bool()
    real_avail = avail[:, :T] & step_mask[..., None, None]
    real_unavail = ~avail[:, :T] & step_mask[..., None, None]
    res = {}
    ta, oa = CAPTURE.store["their_actor"][-1], CAPTURE.store["our_actor"][-1]
    tcr, oc = CAPTURE.store["their_critic"][-1], CAPTURE.store["our_critic"][-1]
    ot = CAPTURE.store["our_targets"][-1]
    if detailed:
        say(f"batch: B={B} L={L}; real steps {int(step_mask.sum())}; their mask (filled[:, :-1] after the terminated fix) == our "
            f"filled[:, :-1]: {torch.equal(step_mask, episodes.joint_step_mask)}; unavailable (agent, step, action) entries at real "
            f"steps: {int(real_unavail.sum())} of {real_unavail.numel()}")

    # ---- actor (fop_learner.py L44-99; fop.py actor_step L152-168) ----
    say("-- actor step (weights before the update) --")
    their_alpha = ta["alpha"]
    say(f"alpha at t_env={T_ENV}: theirs max(0.05, 0.5 - t/200000) = {their_alpha!r}, ours linear_schedule = {ours.alpha!r}; "
        f"diff {abs(their_alpha - ours.alpha):.3e}")
    their_log_pi = ta["log_pi"].view(B, T, n, A)
    our_log_pi = oa["log_pi"][:, :T]
    res["log_pi"] = mx(their_log_pi, our_log_pi, real_avail)
    say(f"log pi at real steps, available actions: max|diff| {res['log_pi']:.3e}")
    if real_unavail.any():
        tp = their_log_pi.exp()
        say(f"  (e) unavailable actions: theirs pi = {tp[real_unavail].min().item():.3e}..{tp[real_unavail].max().item():.3e} "
            f"(mac_out[avail==0] = 1e-10, renormalised, set again: L64-66), log pi {their_log_pi[real_unavail].max().item():.3f}; "
            f"ours pi = {our_log_pi.exp()[real_unavail].max().item():.1e} (masked logit -1e10, policy.py L9-14)")
        say(f"  their pi of available actions is shrunk by the 1e-10 mass of the unavailable ones: max|pi diff| on available "
            f"{mx(their_log_pi.exp(), our_log_pi.exp(), real_avail):.3e}")
    tq = ta["q_vals"][:, :-1]
    oq = oa["q_values"]
    res["actor_q"] = mx(tq, oq, step_mask[..., None, None])
    say(f"min(Q1, Q2) of the online critics (real steps): max|diff| {res['actor_q']:.3e}")
    oo = CAPTURE.store["our_actor_objective"][-1]
    their_per_agent = ta["pol_target"].view(B, T, n)
    our_per_agent = oo["per_agent"]
    res["pol_target"] = mx(their_per_agent, our_per_agent, step_mask[..., None])
    say(f"per-agent sum_a pi (alpha log pi - Q) (real steps): max|diff| {res['pol_target']:.3e}")
    if real_unavail.any():
        tpi = their_log_pi.exp()
        unavail_part = (tpi * (their_alpha * their_log_pi - tq)) * real_unavail
        say(f"  of which the unavailable actions' 1e-10 terms in theirs: max per agent-step {unavail_part.sum(-1).abs().max().item():.3e}")
    res["actor_loss"] = abs(ta["policy_loss"].item() - oa["actor_loss"].item())
    say(f"actor loss: theirs {ta['policy_loss'].item():.15e} ours {oa['actor_loss'].item():.15e}; diff {res['actor_loss']:.3e} "
        f"(both: mean over real agent-steps)")
    t_clips = [c for c in CLIPS if c["side"] == "theirs"]
    o_clips = [c for c in CLIPS if c["side"] == "ours"]
    ta_pre, ta_post = grads_by_name(t_clips[0], {"agent": learner.mac.agent})
    oa_pre, oa_post = grads_by_name(o_clips[0], {"agent": ours.actor})
    ta_pre_b = agent_build({k[6:]: v for k, v in ta_pre.items()})
    ta_post_b = agent_build({k[6:]: v for k, v in ta_post.items()})
    d_pre = max((ta_pre_b[k] - oa_pre["agent." + k]).abs().max().item() for k in ta_pre_b)
    d_post = max((ta_post_b[k] - oa_post["agent." + k]).abs().max().item() for k in ta_post_b)
    gscale = max(v.abs().max().item() for v in ta_pre_b.values())
    res["agent_grad"] = d_pre
    say(f"agent gradient: norm theirs {t_clips[0]['norm']:.12e} ours {o_clips[0]['norm']:.12e}; max|diff| pre-clip {d_pre:.3e} "
        f"post-clip {d_post:.3e} (max|g| {gscale:.3e}); clip {t_clips[0]['max_norm']}/{o_clips[0]['max_norm']}")

    # ---- critic (fop_learner.py L108-206; fop.py critic_step L170-186) ----
    say("-- critic step (after the actor step, both sides) --")
    pi_c = tcr["pi"]  # their pi after the actor step, [B, L, n, A]
    our_log_pi_c = ot["log_pi"]
    res["log_pi_critic"] = mx(pi_c.log(), our_log_pi_c, avail & episodes_valid_slots(py_batch)[..., None, None])
    say(f"log pi at the critic step (real steps and each episode's last stored slot, available actions): max|diff| "
        f"{res['log_pi_critic']:.3e}")
    same_draws = torch.equal(tcr["next_actions"].squeeze(3), ot["next_actions"])
    say(f"next actions a' (fixed draws on both sides: fop_learner.Categorical and fop.sample replaced): equal {same_draws}")
    tiq = CAPTURE.store["our_individual_q"]  # calls: actor (online), targets (target), critic (online)
    their_tq = [tcr["target_q_vals1"], tcr["target_q_vals2"]]
    our_tq = tiq[1]["__return__"]
    valid = episodes_valid_slots(py_batch)
    for i in range(2):
        say(f"target critic {i + 1}: Q'_i (valid slots) max|diff| {mx(their_tq[i], our_tq[i], valid[..., None, None]):.3e}")
    tmix, omix = CAPTURE.store["their_mixer"], CAPTURE.store["our_mixer"]
    tw, ow = CAPTURE.store["their_weight"], CAPTURE.store["our_attention"]
    tl, ol = CAPTURE.store["their_lambda"], CAPTURE.store["our_lambda"]
    their_vs = [tcr["next_vs1"], tcr["next_vs2"]]
    for i in range(2):
        res[f"V{i + 1}"] = mx(their_vs[i], omix[i]["agent_values"], valid[..., None])
        say(f"target soft values V'_{i + 1} = alpha logsumexp(Q'/alpha) (valid slots): max|diff| {res[f'V{i + 1}']:.3e}")
    # mixers: calls 0, 1 target (all L slots), 2, 3 online (slots :T)
    for call, label, where in ((0, "target mixer 1", valid), (1, "target mixer 2", valid), (2, "online mixer 1", step_mask),
                               (3, "online mixer 2", step_mask)):
        Tm = where.shape[1]
        t_w = tmix[call]["weight"].view(B, Tm, n)
        o_w = omix[call]["weights"]
        t_lam = tl[call]["__return__"].view(B, Tm, n)
        o_lam = ol[call]["__return__"]
        t_q = tmix[call]["__return__"][0][..., 0]
        o_q = omix[call]["__return__"][0]
        t_logits = torch.stack([x.view(B, Tm, n) for x in tw[call]["head_attend_logits"]], 2)
        o_logits = ow[call]["__return__"][1]
        res[f"Qtot{call}"] = mx(t_q, o_q, where)
        res[f"w{call}"] = mx(t_w, o_w, where[..., None])
        v_txt = ""
        if call < 2:  # target mixers are unchanged by the update: V(s) recomputed on our side
            with torch.no_grad():
                o_v = ours.target_mixers[call].value(episodes.state).squeeze(-1)
            v_txt = f"; V(s) {mx(tmix[call]['v'].view(B, Tm, n).sum(-1), o_v, where):.3e}"
        say(f"{label}: attention w_i max|diff| {res[f'w{call}']:.3e} (theirs in [{t_w[where].min().item():.3f}, "
            f"{t_w[where].max().item():.3f}]); logits {mx(t_logits, o_logits, where[..., None, None]):.3e}; lambda_i "
            f"{mx(t_lam, o_lam, where[..., None]):.3e}{v_txt}; stopgrad adv. term "
            f"{mx(tmix[call]['adv_tot'][..., 0], (omix[call]['corrected']), where):.3e}; "
            f"Q_tot {res[f'Qtot{call}']:.3e} (max|Q_tot| {t_q[where].abs().max().item():.3f})")
    their_min = tcr["target_qvals"][..., 0]
    our_min = CAPTURE.store["our_target_values"][-1]["__return__"]
    say(f"min of the two target Q_tot (valid slots): max|diff| {mx(their_min, our_min, valid):.3e}")
    their_v = tcr["target_v"][..., 0]
    our_ret = ot["returns"]
    res["td_lambda"] = mx(their_v, our_ret, step_mask)
    say(f"TD(lambda) returns (rl_utils.build_td_lambda_targets vs returns.lambda_returns, real steps): max|diff| {res['td_lambda']:.3e}")
    their_ent = tcr["alpha"] * tcr["log_pi_taken"].mean(-1)
    from dmac_lightning.policy import gather_actions
    our_ent = ours.alpha * gather_actions(ot["log_pi"], ot["next_actions"])[:, 1:].mean(-1)
    res["entropy"] = mx(their_ent, our_ent, step_mask)
    say(f"entropy term alpha mean_i log pi(a'_i) at t+1 (real steps): max|diff| {res['entropy']:.3e} (max {their_ent[step_mask].abs().max().item():.3f})")
    last = step_mask & ~torch.cat([step_mask[:, 1:], torch.zeros_like(step_mask[:, :1])], 1)
    term_last = last & (py_batch["terminated"][:, :-1, 0] > 0)
    if term_last.any():
        say(f"  (both sides keep it at the last step of a terminated episode, from the terminal slot: |alpha mean log pi| there up to "
            f"{their_ent[term_last].abs().max().item():.3f}; fop_learner.py L147-148/170 masks only by the step's own mask; fop.py L130 likewise)")
    their_targets = tcr["targets"][..., 0]
    our_targets = oc["targets"]
    res["targets"] = mx(their_targets, our_targets, step_mask)
    say(f"critic targets y = G - entropy (real steps): max|diff| {res['targets']:.3e} (max|y| {their_targets[step_mask].abs().max().item():.3f})")

    # losses per pair
    our_mixed = oc["mixed"]
    coef = ours.attention_regularization
    for i in range(2):
        tq_i = tcr[f"q_taken{i + 1}"][..., 0]
        oq_i = our_mixed[i][0]
        mse_o = ((oq_i - our_targets) ** 2 * step_mask).sum() / step_mask.sum()
        logits = our_mixed[i][1]
        reg_o = coef * ((logits ** 2) * step_mask[..., None, None]).sum() / (step_mask.sum() * n * H) * H
        reg_t = tcr[f"q_attend_regs{i + 1}"]
        loss_t = tcr[f"loss{i + 1}"]
        mse_t = loss_t - reg_t
        res[f"reg{i + 1}"] = abs(reg_t.item() - reg_o.item())
        res[f"loss{i + 1}"] = abs(loss_t.item() - (mse_o + reg_o).item())
        say(f"pair {i + 1}: Q_tot (real steps) {mx(tq_i, oq_i, step_mask):.3e}; MSE theirs {mse_t.item():.12e} ours {mse_o.item():.12e} "
            f"(diff {abs(mse_t.item() - mse_o.item()):.3e}); attention reg theirs {reg_t.item():.6e} ours {reg_o.item():.6e} "
            f"(diff {res[f'reg{i + 1}']:.3e}); loss diff {res[f'loss{i + 1}']:.3e}")
    total_t = (tcr["loss1"] + tcr["loss2"]).item()
    total_o = (oc["critic_loss"] + ours.attention_regularization * oc["attention"]).item()
    say(f"critic loss, both pairs: theirs loss1 + loss2 {total_t:.15e}; ours critic_loss + 1e-3 attention {total_o:.15e}; diff "
        f"{abs(total_t - total_o):.3e}")

    # gradients and clip
    o_crit_clip = o_clips[1]
    our_g_pre, our_g_post = {}, {}
    for k, p in ours.named_parameters():
        if id(p) in o_crit_clip["pre"]:
            our_g_pre[k] = o_crit_clip["pre"][id(p)]
            our_g_post[k] = o_crit_clip["post"][id(p)]
    norms_t = []
    for i in range(2):
        clip = t_clips[1 + i]
        tg_pre, tg_post = grads_by_name(clip, {"critic": getattr(learner, f"critic{i + 1}"), "mixer": getattr(learner, f"mixer{i + 1}")})
        d_pre, missing = compare_grads(tg_pre, our_g_pre, H, i, keys_from == "obs")
        d_post, _ = compare_grads(tg_post, our_g_post, H, i, keys_from == "obs")
        norms_t.append(clip["norm"])
        worst = max(d_pre, key=d_pre.get)
        res[f"grad{i + 1}_pre"] = d_pre[worst]
        res[f"grad{i + 1}_post"] = max(d_post.values())
        say(f"pair {i + 1} gradient (critic {i + 1} + mixer {i + 1}): their clip over {clip['n_params']} params ({clip['n_with_grad']} with grad), "
            f"norm {clip['norm']:.12e}; max|diff| vs ours pre-clip {d_pre[worst]:.3e} (at {worst}), post-clip {res[f'grad{i + 1}_post']:.3e}"
            + (f"; not compared {missing}" if missing else ""))
        if detailed and d_pre[worst] > 1e-12:
            for k, v in sorted(d_pre.items(), key=lambda kv: -kv[1])[:6]:
                say(f"    {k}: {v:.3e}")
    joint = float(np.sqrt(sum(x * x for x in norms_t)))
    say(f"clip: theirs per pair norms {norms_t[0]:.9e}, {norms_t[1]:.9e} (each clipped at {t_clips[1]['max_norm']}); ours one clip over "
        f"{o_crit_clip['n_params']} params, norm {o_crit_clip['norm']:.9e}; sqrt(n1^2+n2^2) = {joint:.9e} "
        f"(diff {abs(joint - o_crit_clip['norm']):.3e}); binds: theirs {[x > 10 for x in norms_t]}, ours {o_crit_clip['norm'] > 10}")
    res["norms_t"], res["norm_o"] = norms_t, o_crit_clip["norm"]

    say("-- weights after the whole update (actor step, critic step) --")
    wd = weight_diffs(learner, ours, H, keys_from == "obs")
    res["weights"] = wd
    for label, d in wd.items():
        say(f"  {label:15s} max|diff| {d:.3e}")
    if max(wd.values()) > 1e-12 and detailed:
        for label in ("mixer1", "mixer2"):
            pd = per_param_diffs(learner, ours, H, label, keys_from == "obs")
            say(f"  {label} per parameter: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(pd.items(), key=lambda kv: -kv[1])[:5]))
    if keys_from == "obs":
        say_query_heads(learner, ours, H, snapshot)
    return res


def episodes_valid_slots(py_batch):
    """[B, L]: real steps plus each episode's last stored slot (the bootstrap / terminal entry)."""
    filled = py_batch["filled"][..., 0].bool()
    return filled


# ---------------------------------------------------------------------------------------------------------
def quick_compare(title, learner, ours, py_batch, H, keys_from):
    """Summary of one update: Q_tot of the four mixers, targets, losses, grad norms, weights after."""
    B, L = py_batch.batch_size, py_batch.max_seq_length
    n = learner.n_agents
    step_mask = their_masks(py_batch)[..., 0].bool()
    valid = episodes_valid_slots(py_batch)
    tcr, oc = CAPTURE.store["their_critic"][-1], CAPTURE.store["our_critic"][-1]
    tmix, omix = CAPTURE.store["their_mixer"], CAPTURE.store["our_mixer"]
    say(f"-- {title}")
    for call, label, where in ((0, "target mixer 1", valid), (2, "online mixer 1", step_mask)):
        Tm = where.shape[1]
        t_w = tmix[call]["weight"].view(B, Tm, n)
        o_w = omix[call]["weights"]
        t_q = tmix[call]["__return__"][0][..., 0]
        o_q = omix[call]["__return__"][0]
        say(f"   {label}: w_i max|diff| {mx(t_w, o_w, where[..., None]):.3e} (theirs w in [{t_w[where].min().item():.3f}, "
            f"{t_w[where].max().item():.3f}], ours [{o_w[where].min().item():.3f}, {o_w[where].max().item():.3f}]); Q_tot max|diff| "
            f"{mx(t_q, o_q, where):.3e} (max|Q_tot| {t_q[where].abs().max().item():.3f})")
    say(f"   critic targets max|diff| {mx(tcr['targets'][..., 0], oc['targets'], step_mask):.3e}; losses theirs {tcr['loss1'].item():.6e}, "
        f"{tcr['loss2'].item():.6e}")
    t_clips = [c for c in CLIPS if c["side"] == "theirs"]
    o_clips = [c for c in CLIPS if c["side"] == "ours"]
    say(f"   critic grad norms theirs {t_clips[1]['norm']:.6e}, {t_clips[2]['norm']:.6e} -> joint {np.hypot(t_clips[1]['norm'], t_clips[2]['norm']):.6e}; "
        f"ours {o_clips[1]['norm']:.6e}")
    wd = weight_diffs(learner, ours, H, keys_from == "obs")
    say("   weights after the update max|diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in wd.items())
        + ("" if keys_from == "obs" else " (key extractors not compared: different input width)"))
    for label in ("mixer1",):
        pd = per_param_diffs(learner, ours, H, label, keys_from == "obs")
        say(f"   {label} largest per parameter: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(pd.items(), key=lambda kv: -kv[1])[:4]))


# ---------------------------------------------------------------------------------------------------------
def check_alpha(ours):
    worst = 0.0
    for t in list(range(0, 200_001, 997)) + [89_999, 90_000, 90_001]:
        set_counters(ours, t, 0)
        worst = max(worst, abs(max(0.05, 0.5 - t / 200000) - ours.alpha))
    say(f"alpha schedule over t_env in [0, 200000] (205 points): max|theirs - ours| {worst:.3e}")


def check_target_copies(learner, ours, callbacks, H):
    """Their train() target rule (fop_learner.py L104-106, episode_num = run.py's `episode`, the count of episodes collected
    *before* this one, run.py:169/197/217) vs our TargetNetworkUpdate(every_n_episodes=200) (targets.py L90-92,
    module.episodes = episodes collected including this one). Actor/critic steps are stubbed: only the counters run."""
    say("")
    say("=" * 110)
    say("TARGET COPIES (f): 1000 collected episodes, one update per episode once 100 are stored (FOP regime on both sides)")
    say("=" * 110)
    ta, tc = learner.train_actor, learner.train_critic
    learner.train_actor = lambda *a, **k: None
    learner.train_critic = lambda *a, **k: None
    their_copies, our_copies = [], []
    orig_update = learner._update_targets
    state = {"c": 0}

    def counted():
        their_copies.append(state["c"])
        orig_update()

    learner._update_targets = counted
    for c in callbacks:
        c.updates, c.copied_at = 0, 0
    for collected in range(1, 1001):
        state["c"] = collected
        if collected < 100:
            continue
        learner.train(None, 0, collected - 1)  # run.py: learner.train(batch, runner.t_env, episode) before `episode += 1`
        set_counters(ours, 0, collected)
        copied_at = [c.copied_at for c in callbacks]
        for c in callbacks:
            c.on_train_batch_end(None, ours, {"updated": True}, None, 0)
        if [c.copied_at for c in callbacks] != copied_at:
            our_copies.append(collected)
    learner.train_actor, learner.train_critic = ta, tc
    learner._update_targets = orig_update
    say(f"copies after episode (collected count): theirs {their_copies}; ours {our_copies}")
    say("their copy copies critic1/2 and mixer1/2 (L223-227); ours: " + ", ".join(f"{c.source}->{c.target}" for c in callbacks))
    wd = weight_diffs(learner, ours, H)
    say("after the copies, targets == online on each side: theirs "
        f"{max((a - b).abs().max().item() for a, b in zip(learner.target_mixer1.parameters(), learner.mixer1.parameters())):.1e}, ours "
        f"{max((a - b).abs().max().item() for a, b in zip(ours.target_mixers.parameters(), ours.mixers.parameters())):.1e}; "
        f"theirs vs ours: " + ", ".join(f"{k} {v:.1e}" for k, v in wd.items() if k.startswith("target")))


# ---------------------------------------------------------------------------------------------------------
def run_env(key):
    spec = ENVS[key]
    say("")
    say("#" * 110)
    say(f"# ENV {key}: PymarlEnv(env={spec['env']!r}, env_kwargs={spec['env_kwargs']}, seed=0)")
    say("#" * 110)
    np.random.seed(0)
    torch.manual_seed(0)
    t0 = time.time()
    env = PymarlEnv(env=spec["env"], env_kwargs=dict(spec["env_kwargs"]), seed=0)
    env_info = env.get_env_info()
    obs_dim = env_info["obs_shape"]
    args = their_args(spec, env_info)
    unit_dim_pub = args.unit_dim
    say(f"env_info {env_info}; their unit_dim {unit_dim_pub} ({'len(agent_features)' if 'agent_features' in env_info else 'set by hand'}); "
        f"unit_dim*n_agents = {unit_dim_pub * args.n_agents} of state {args.state_shape}")
    say(f"their settings: lr {args.lr} c_lr {args.c_lr} td_lambda {args.td_lambda} gamma {args.gamma} target_update_interval "
        f"{args.target_update_interval} grad_norm_clip {args.grad_norm_clip} optim alpha {args.optim_alpha} eps {args.optim_eps} "
        f"n_head {args.n_head} mixing_embed_dim {args.mixing_embed_dim} hypernet_embed {args.hypernet_embed} attend_reg_coef "
        f"{args.attend_reg_coef} rnn_hidden_dim {args.rnn_hidden_dim} mask_before_softmax {args.mask_before_softmax} "
        f"batch_size {args.batch_size} burn_in {args.burn_in_period}")
    init_args = load_preset()
    say(f"our preset ({PRESET}): {init_args}")
    H = args.n_head

    scheme, groups, preprocess = their_scheme(args, obs_dim)
    buffer = ReplayBuffer(scheme, groups, 5000, args.episode_limit + 1, args.burn_in_period, preprocess=preprocess, device="cpu")
    mac = mac_REGISTRY[args.mac](buffer.scheme, groups, args)
    # the learner whose init is the reference: keys on the observation (unit_dim = obs_dim); its networks as published
    # (one query hypernet per head, each with its own init), targets the deepcopies its __init__ makes
    args_obs = copy.copy(args)
    args_obs.unit_dim = obs_dim
    torch.manual_seed(1)
    learner0 = FOP_Learner(mac, buffer.scheme, DummyLogger(), args_obs)
    snapshot = {name: copy.deepcopy(getattr(learner0, name).state_dict()) for name in
                ("critic1", "critic2", "mixer1", "mixer2", "target_critic1", "target_critic2", "target_mixer1", "target_mixer2")}
    snapshot["agent"] = copy.deepcopy(mac.agent.state_dict())
    # their mixer with the published unit_dim, for the parameter count
    args_pub = copy.copy(args)
    pub_mixer = TheirMixer(args_pub)
    say(f"their FOPMixer parameters (as published, unit_dim {unit_dim_pub}): {sum(p.numel() for p in pub_mixer.parameters())}; "
        f"of which query hypernets {H} x ({sum(p.numel() for p in pub_mixer.selector_extractors[0][0].parameters())} + "
        f"{pub_mixer.selector_extractors[0][2].weight.numel()}), key extractors {H} x {pub_mixer.key_extractors[0].weight.numel()}")

    ours, opts, callbacks = build_ours(env.info, init_args)
    om0 = ours.mixers[0]
    say(f"our FOPMixer parameters: {sum(p.numel() for p in om0.parameters())}; query hypernets {H} x "
        f"({(om0.query_hidden.weight.numel() + om0.query_hidden.bias.numel()) // H} + {om0.query_out[0].numel()}) (query_hidden "
        f"{tuple(om0.query_hidden.weight.shape)}, query_out {tuple(om0.query_out.shape)}: one per head, as theirs); keys "
        f"{om0.keys.weight.numel()} = {H} x {obs_dim} x {args.mixing_embed_dim}")
    say(f"agent input: theirs {mac._get_input_shape(buffer.scheme)} ours {ours.actor.encoder.in_features}; critic input: theirs "
        f"{learner0.critic1.fc1.in_features} (critics/fop.py L18-47: obs, last action, id) ours {ours.critics[0].encoder.in_features} "
        f"(obs, last action, id)")
    say(f"our callbacks: {[(c.source, c.target, c.counter, c.every) for c in callbacks]}; optimisers: ours "
        f"{[(len(o.param_groups[0]['params']), o.defaults['lr'], o.defaults['alpha'], o.defaults['eps'], o.defaults['foreach']) for o in opts]}; "
        f"theirs p {len(learner0.p_optimiser.param_groups[0]['params'])} c1 {len(learner0.c_optimiser1.param_groups[0]['params'])} "
        f"c2 {len(learner0.c_optimiser2.param_groups[0]['params'])}")
    say("weights theirs -> ours: agent, critic1/2 (fc1, GRU, fc2 -> encoder, rnn, head), mixer1/2 and all four targets (keys.h -> "
        "head_keys rows h, agents_extractors.h -> head_agents rows h*n.., action_extractors.h -> head_actions rows, V -> value, "
        f"selector_extractors.h.0 -> query_hidden rows h*{args.hypernet_embed}.., selector_extractors.h.2.weight.T -> query_out[h], "
        f"key_extractors.h -> keys rows h*{args.mixing_embed_dim}..)")
    unmatched = copy_weights(learner0, ours, H)
    left = sorted({k for v in unmatched.values() for k in v})
    say(f"  their parameters with no counterpart (reference learner, keys on the observation): {left if left else 'none'}. "
        f"Their key extractors as published (unit_dim {unit_dim_pub}, state blocks) have none: difference (a), section C; "
        f"elsewhere their keys are fed our observations (unit_dim = obs_dim = {obs_dim}, monkeypatched weight) and copied from ours.")
    say(f"  after copy: {weight_diffs(learner0, ours, H)}")
    our_snapshot = copy.deepcopy(ours.state_dict())

    # collect with their runner
    runner = r_REGISTRY[args.runner](args=args, logger=DummyLogger())
    runner.env = env
    runner.episode_limit = env.episode_limit
    runner.setup(scheme=scheme, groups=groups, preprocess=preprocess, mac=mac)
    N = spec["n_episodes"]
    for _ in range(N):
        buffer.insert_episode_batch(runner.run(test_mode=False))
    sample = buffer[:N]
    sample = sample[:, : sample.max_t_filled()]
    py_batch = to_float64(sample)
    L = py_batch.max_seq_length
    eps = canonical_from_pymarl(py_batch)
    rebuilt = to_float64(to_pymarl(eps, L, scheme, groups, preprocess))
    same = all(torch.equal(py_batch[k], rebuilt[k]) for k in py_batch.data.transition_data)
    td = to_ours(eps, L, args.n_agents, args.n_actions)
    lengths = [e["reward"].shape[0] for e in eps]
    say(f"collected {N} episodes with their EpisodeRunner ({time.time() - t0:.1f}s so far): L = {L}, lengths {lengths}, terminated "
        f"at the end {[int(e['terminated'][-1]) for e in eps]} (0 = time limit), returns {[round(float(e['reward'].sum()), 3) for e in eps]}; "
        f"rebuilt-from-canonical == runner batch: {same}")

    episodes = ours.episode_batch(td)
    gen = torch.Generator().manual_seed(123)

    # A. aligned: keys from the observation (a isolated), per-head query hypernets untied on both sides, their regulariser as published
    learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
    reset_ours(ours, opts, callbacks, our_snapshot)
    assert max(weight_diffs(learner, ours, H).values()) == 0.0
    fixed = fixed_draws(ours, episodes, gen)
    episodes = run_update(learner, ours, callbacks, py_batch, td, fixed)
    resA = stage_report(f"[{key}] A. ALIGNED NETWORKS: their keys read each agent's observation (monkeypatched weight: (a) isolated); "
                        f"their {H} query hypernets untied, as published, each mapped onto its head of ours (query_hidden rows, "
                        "query_out[h]); their attention regulariser as published ((d) shows where there is padding)", learner, ours, py_batch, td, episodes, H,
                        snapshot=snapshot)
    learner_after_A = learner

    padded = bool((~their_masks(py_batch)[..., 0].bool()).any())
    if padded:
        # A'. the same with their regulariser averaged over real rows only
        learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
        reset_ours(ours, opts, callbacks, our_snapshot)
        REG["mask"] = their_masks(py_batch)[..., 0]
        episodes = run_update(learner, ours, callbacks, py_batch, td, fixed)
        REG["mask"] = None
        stage_report(f"[{key}] A'. as A, and their attention regulariser averaged over the real steps only (monkeypatch; ours: "
                     "fop.py L178): (d) removed", learner, ours, py_batch, td, episodes, H, detailed=True, snapshot=snapshot)

    # A-T. a time-limit end: the longest episode's last step stored as not terminated (what PyMARL's runner stores when
    # info["episode_limit"]; PymarlEnv says so where our env truncates). Only the longest episode can be truncated in a real
    # batch (time limits end episodes at episode_limit), so its bootstrap slot is the batch's last slot on both sides.
    eps_t = [dict(e) for e in eps]
    longest = int(np.argmax(lengths))
    eps_t[longest]["terminated"] = eps_t[longest]["terminated"].clone()
    eps_t[longest]["terminated"][-1] = 0
    py_t = to_float64(to_pymarl(eps_t, L, scheme, groups, preprocess))
    td_t = to_ours(eps_t, L, args.n_agents, args.n_actions)
    learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
    reset_ours(ours, opts, callbacks, our_snapshot)
    REG["mask"] = their_masks(py_t)[..., 0] if padded else None
    episodes_t = run_update(learner, ours, callbacks, py_t, td_t, fixed)
    REG["mask"] = None
    stage_report(f"[{key}] A-T. as A{chr(39) if padded else ''}, with episode {longest} (length {lengths[longest]}, the longest) ending by the "
                 "time limit (terminated stored 0 at its last step): bootstrap from the target mixers at its last slot",
                 learner, ours, py_t, td_t, episodes_t, H, detailed=False, snapshot=snapshot)
    tcr, oc = CAPTURE.store["their_critic"][-1], CAPTURE.store["our_critic"][-1]
    k = lengths[longest]
    say(f"  truncated episode, last step target: theirs {tcr['targets'][longest, k - 1, 0].item():.15e} ours "
        f"{oc['targets'][longest, k - 1].item():.15e}; bootstrap min target Q_tot at slot {k}: "
        f"{tcr['target_qvals'][longest, k, 0].item():.6f}")

    # A''. several consecutive updates (aligned, regulariser masked where there is padding), fresh shared draws each
    say("")
    say(f"[{key}] A''. 5 consecutive updates on the same batch, aligned networks (per-head queries untied)"
        + (", regulariser masked" if padded else ""))
    learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
    reset_ours(ours, opts, callbacks, our_snapshot)
    REG["mask"] = their_masks(py_batch)[..., 0] if padded else None
    for u in range(1, 6):
        fixed_u = fixed_draws(ours, episodes, gen)
        episodes = run_update(learner, ours, callbacks, py_batch, td, fixed_u, t_env=T_ENV + 50 * u, episode_num=EPISODE_NUM + u)
        wd = weight_diffs(learner, ours, H)
        say(f"  update {u}: max|diff| " + " ".join(f"{k} {v:.1e}" for k, v in wd.items()))
        if u in (1, 5):
            say_query_heads(learner, ours, H, snapshot, indent="    ")
    REG["mask"] = None

    # B. the clip binds: rewards x 300 on both sides
    say("")
    say("=" * 110)
    say(f"[{key}] B. CLIP BINDS (aligned networks; rewards x300 in both batches): (b) per-pair clip (theirs) vs joint clip (ours)")
    say("=" * 110)
    py_big = to_float64(to_pymarl(eps, L, scheme, groups, preprocess))
    py_big.data.transition_data["reward"] = py_big.data.transition_data["reward"] * 300
    td_big = td.clone()
    td_big.set("reward", td_big.get("reward") * 300)
    learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
    reset_ours(ours, opts, callbacks, our_snapshot)
    REG["mask"] = their_masks(py_batch)[..., 0] if padded else None
    episodes_big = run_update(learner, ours, callbacks, py_big, td_big, fixed)
    REG["mask"] = None
    t_clips = [c for c in CLIPS if c["side"] == "theirs"]
    o_clips = [c for c in CLIPS if c["side"] == "ours"]
    n1, n2, no = t_clips[1]["norm"], t_clips[2]["norm"], o_clips[1]["norm"]
    say(f"pre-clip norms: theirs pair 1 {n1:.6e}, pair 2 {n2:.6e}; ours joint {no:.6e} (sqrt(n1^2+n2^2) {np.hypot(n1, n2):.6e})")
    say(f"scale applied: theirs {min(1, 10 / (n1 + 1e-6)):.6e}, {min(1, 10 / (n2 + 1e-6)):.6e}; ours {min(1, 10 / (no + 1e-6)):.6e} on both")
    our_g_pre, our_g_post = {}, {}
    for k, p in ours.named_parameters():
        if id(p) in o_clips[1]["pre"]:
            our_g_pre[k], our_g_post[k] = o_clips[1]["pre"][id(p)], o_clips[1]["post"][id(p)]
    for i in range(2):
        tg_pre, tg_post = grads_by_name(t_clips[1 + i], {"critic": getattr(learner, f"critic{i + 1}"), "mixer": getattr(learner, f"mixer{i + 1}")})
        d_pre, _ = compare_grads(tg_pre, our_g_pre, H, i)
        d_post, _ = compare_grads(tg_post, our_g_post, H, i)
        gmax = max(v.abs().max().item() for v in tg_post.values())
        say(f"pair {i + 1}: pre-clip gradient max|diff| {max(d_pre.values()):.3e}; post-clip max|diff| {max(d_post.values()):.3e} "
            f"(their max|g| after clip {gmax:.3e})")
    wd = weight_diffs(learner, ours, H)
    say("weights after the update max|diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in wd.items()))
    say("(RMSprop's first step divides by sqrt((1-0.99) g^2) + 1e-5, so a rescaled gradient moves each weight by almost the same "
        "lr*10*sign(g); the clip's effect shows in later steps through the running average)")
    del episodes_big

    # C. as-published networks: with the per-head queries matched (1bdee46), the keys (a) are the only network difference left
    say("")
    say("=" * 110)
    say(f"[{key}] C. AS-PUBLISHED NETWORKS against ours, same initial weights where they have counterparts, same draws")
    say("=" * 110)
    learner = make_their_learner(mac, buffer.scheme, args, snapshot, "state", seed=2)
    reset_ours(ours, opts, callbacks, our_snapshot)
    episodes = run_update(learner, ours, callbacks, py_batch, td, fixed)
    quick_compare(f"[{key}] C. (a) keys from the state's ally blocks (unit_dim {unit_dim_pub}, as published; their own init); "
                  "everything else as A, the per-head query hypernets included", learner, ours, py_batch, H, "state")

    # could any unit_dim make their keys equal ours? (theirs: state[:, i*u:(i+1)*u], ours: obs_i)
    u = obs_dim
    probe = copy.copy(args)
    probe.unit_dim = u
    pm = TheirMixer(probe)
    try:
        with torch.no_grad():
            pm(py_batch["state"].new_zeros(B_ := py_batch.batch_size, L, args.n_agents), py_batch["state"],
               actions=py_batch["actions_onehot"], vs=py_batch["state"].new_zeros(B_, L, args.n_agents))
        outcome = "ran (batch rows silently regrouped)"
    except RuntimeError as exc:
        outcome = f"RuntimeError: {str(exc).splitlines()[0][:120]}"
    say(f"unit_dim = obs_dim = {u} in their mixer (the only width whose key extractors fit our keys): needs {u * args.n_agents} state "
        f"entries, the state has {args.state_shape}; states[:, :{u * args.n_agents}] keeps {min(u * args.n_agents, args.state_shape)} and "
        f"reshape(-1, {args.n_agents}, {u}) -> {outcome}")

    # target copies (on the learner of A, weights after one update so online != target)
    check_alpha(ours)
    learner = make_their_learner(mac, buffer.scheme, args_obs, snapshot, "obs")
    reset_ours(ours, opts, callbacks, our_snapshot)
    fixed = fixed_draws(ours, ours.episode_batch(td), gen)
    REG["mask"] = their_masks(py_batch)[..., 0] if padded else None
    run_update(learner, ours, callbacks, py_batch, td, fixed)
    REG["mask"] = None
    check_target_copies(learner, ours, callbacks, H)
    say(f"[{key}] done in {time.time() - t0:.1f}s")
    return resA


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    keys = ["sg", "smax"] if which == "all" else [which]
    for key in keys:
        run_env(key)
    return 0


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    try:
        sys.exit(main())
    finally:
        name = "update_check_fop.out" if which == "all" else f"update_check_fop.{which}.out"
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
        with open(path, "w") as f:
            f.write("\n".join(OUT) + "\n")
