"""The README's "Adding an algorithm family" and "Adding an environment", done literally.

A toy family (independent actor-critic, IAC, and IAC+DMAC) and a toy env (a coordination game)
written by following the two sections step by step, registered, configured with YAML files and
trained through the real CLI. Neither is shipped: they live in this test.
"""

from __future__ import annotations

import copy
import glob
import os
from typing import Any

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs

from dmac_lightning import divergence
from dmac_lightning.algorithms import ALGORITHMS, REGISTRY, DivergenceRegularized, MultiAgentModule, register_algorithm
from dmac_lightning.algorithms.episodes import EpisodeBatch
from dmac_lightning.cli import main
from dmac_lightning.envs import ENVS, EnvEntry, check_env_config, make_env, register_env
from dmac_lightning.envs.common import ACTION, STATE, EnvInfo, multi_agent_specs
from dmac_lightning.networks import individual_critic_inputs, mlp
from dmac_lightning.policy import gather_actions
from dmac_lightning.returns import lambda_returns, masked_mean
from dmac_lightning.targets import freeze, hard_target_updates
from dmac_lightning.validation import check_positive_int, check_range


# -- Adding an algorithm family, step 1: the baseline ------------------------------------------------
class Iac(MultiAgentModule):
    """Independent actor-critic: agent i's critic ``Q_i(o_i, .)`` learns TD(lambda) targets of the shared
    reward; its actor follows ``Q_i(o_i, a_i) - sum_a pi_i(a) Q_i(o_i, a)`` on the actions it took.

    Args:
        td_lambda: TD(lambda) factor of the critic targets, in [0, 1].
        critic_hidden_dims: hidden widths of the critic MLP.
        target_update_interval: copy the critic into its target every this many updates.
        epsilon_start: epsilon-uniform exploration at the start (annealed as the base class says).
        **kwargs: shared settings of :class:`MultiAgentModule`.
    """

    data_regime = "on_policy"
    target_networks = ("critic",)

    def __init__(
        self,
        td_lambda: float = 0.8,
        critic_hidden_dims: list[int] = [64],  # noqa: B006 - LightningCLI reads the default
        target_update_interval: int = 10,
        epsilon_start: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon_start=epsilon_start, **kwargs)
        check_range("model.td_lambda", td_lambda, 0.0, 1.0)
        check_positive_int("model.target_update_interval", target_update_interval)
        self.td_lambda, self.critic_hidden_dims = td_lambda, list(critic_hidden_dims)
        self.target_update_interval = target_update_interval

    def build(self, info: EnvInfo) -> None:
        self.actor = self.make_agent_network()
        self.critic = mlp(info.obs_dim + info.n_agents, self.critic_hidden_dims, info.n_actions)
        self.target_critic = freeze(copy.deepcopy(self.critic))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.rmsprop(self.critic.parameters(), self.lr_critic), self.rmsprop(self.actor.parameters(), self.lr_actor)]

    def configure_callbacks(self) -> list:
        return hard_target_updates(*self.target_networks, every_n_updates=self.target_update_interval)

    def q_values(self, critic: torch.nn.Module, episodes: EpisodeBatch) -> torch.Tensor:
        return critic(individual_critic_inputs(episodes.observation))  # [B, L, n, A]

    def target_values(self, episodes: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        return gather_actions(self.q_values(self.target_critic, episodes), actions)  # [B, L, n]

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        next_values = self.target_values(episodes, actions)[:, 1:]
        return lambda_returns(
            episodes.reward[..., None], episodes.terminated[..., None], episodes.step_mask, next_values, self.gamma, self.td_lambda
        )

    def advantage(self, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor | None) -> torch.Tensor:
        return gather_actions(q_values, actions) - divergence.counterfactual_baseline(q_values, log_pi.exp())

    def update(self, batch: TensorDictBase) -> None:
        episodes = self.episode_batch(batch)
        steps = episodes.decisions
        log_pi, log_rho = self.log_policy(self.actor, episodes), self.log_rho(episodes)
        with torch.no_grad():
            targets = self.critic_targets(episodes, log_pi.detach(), log_rho)
        taken = episodes.actions[:, steps]
        q_taken = gather_actions(self.q_values(self.critic, episodes)[:, steps], taken)
        critic_loss = masked_mean((q_taken - targets) ** 2, episodes.step_mask)
        self.optimizer_step(self.critic_optimizer, critic_loss)

        actions = self.actor_actions(episodes, log_pi.detach())
        with torch.no_grad():
            q_values = self.q_values(self.critic, episodes)[:, steps]
        advantage = self.advantage(q_values, actions, log_pi[:, steps].detach(), None if log_rho is None else log_rho[:, steps])
        actor_loss = divergence.policy_gradient_loss(advantage, gather_actions(log_pi[:, steps], actions), episodes.step_mask)
        self.optimizer_step(self.actor_optimizer, actor_loss)
        self.record(**{"loss/critic": critic_loss, "loss/actor": actor_loss})


# -- step 2: the +DMAC variant ---------------------------------------------------------------------------
class IacDmac(DivergenceRegularized, Iac):
    """IAC+DMAC: rho, the regularised critic targets and the regularised advantage."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(target_update_interval=1, **kwargs)  # not used: the target critic is soft

    def critic_targets(self, episodes: EpisodeBatch, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        actions = episodes.bootstrap_actions(log_pi)
        return self.regularized_targets(episodes, self.target_values(episodes, actions), actions, log_pi, log_rho)

    def advantage(self, q_values: torch.Tensor, actions: torch.Tensor, log_pi: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        return divergence.counterfactual_advantage_at(q_values, actions, log_pi, log_rho, self.omega)


# -- Adding an environment, step 1: the env ----------------------------------------------------------
class CoordinationGame(EnvBase):
    """Every step each agent picks one of ``n_actions``; the team earns 1 when all pick the same action.
    Agents and state see the one-hot timestep; the episode ends (terminated) after ``episode_limit`` steps."""

    def __init__(
        self, n_envs: int = 1, seed: int | None = None, device: torch.device | str | None = None,
        n_agents: int = 2, n_actions: int = 3, episode_limit: int = 4,
    ) -> None:
        super().__init__(batch_size=(n_envs,), device=device)
        self.info = EnvInfo(n_agents=n_agents, n_actions=n_actions, obs_dim=episode_limit, state_dim=episode_limit, episode_limit=episode_limit)
        for key, spec in multi_agent_specs(self.info, n_envs, device).items():
            setattr(self, key, spec)
        self._time = torch.zeros(n_envs, dtype=torch.long, device=device)

    @staticmethod
    def check_config(env_kwargs: dict[str, Any]) -> None:
        for name in ("n_agents", "n_actions", "episode_limit"):
            check_positive_int(f"data.env_kwargs.{name}", env_kwargs.get(name, 1))

    @property
    def optimal_return(self) -> float:
        return float(self.info.episode_limit)

    def _observe(self) -> TensorDict:
        n_envs, info = self.batch_size[0], self.info
        time = torch.nn.functional.one_hot(self._time.clamp(max=info.episode_limit - 1), info.episode_limit).float()
        agents = TensorDict(
            {
                "observation": time.unsqueeze(1).expand(n_envs, info.n_agents, -1),
                "action_mask": torch.ones(n_envs, info.n_agents, info.n_actions, dtype=torch.bool, device=self.device),
            },
            batch_size=(n_envs, info.n_agents),
        )
        return TensorDict({"agents": agents, STATE: time}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        self._time = torch.zeros_like(self._time) if reset is None else torch.where(reset.reshape(-1), 0, self._time)
        out = self._observe()
        flags = torch.zeros(self.batch_size[0], 1, dtype=torch.bool, device=self.device)
        out.update({"done": flags, "terminated": flags.clone(), "truncated": flags.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION)
        reward = (actions == actions[:, :1]).all(-1, keepdim=True).float()
        self._time = self._time + 1
        terminated = (self._time >= self.info.episode_limit).unsqueeze(-1)
        out = self._observe()
        out.update({"reward": reward, "done": terminated, "terminated": terminated.clone(), "truncated": torch.zeros_like(terminated)})
        return out

    def _set_seed(self, seed: int | None) -> None:
        pass  # deterministic


@pytest.fixture
def toy_extensions():
    """Step 3 of both sections: register the family and the env (and remove them afterwards)."""
    entries = [register_algorithm("iac", Iac), register_algorithm("iac_dmac", IacDmac)]
    register_env("coordination", EnvEntry(CoordinationGame, CoordinationGame.check_config))
    yield
    for entry in entries:
        REGISTRY.remove(entry)
        del ALGORITHMS[entry.module.__name__]
    del ENVS["coordination"]


def write_configs(directory) -> tuple[str, str, str]:
    """Step 4 of both sections: an algorithm file per variant and an env file."""
    (directory / "iac.yaml").write_text(f"model:\n  class_path: {__name__}.Iac\n  init_args: {{td_lambda: 0.8}}\ndata: {{batch_size: 8}}\n")
    (directory / "iac_dmac.yaml").write_text(f"model:\n  class_path: {__name__}.IacDmac\n  init_args: {{omega: 0.1, tau: 0.05}}\n")
    (directory / "coordination.yaml").write_text(
        "data:\n  env: coordination\n  env_kwargs: {n_agents: 2, n_actions: 3, episode_limit: 4}\n"
        "  n_envs: 8\n  episodes_per_collect: 8\n  env_steps_per_epoch: 1600\nevaluation: {interval: 1600, episodes: 40}\n"
    )
    return str(directory / "iac.yaml"), str(directory / "iac_dmac.yaml"), str(directory / "coordination.yaml")


def test_the_toy_env_follows_the_key_layout_and_rejects_bad_settings(toy_extensions):
    env = make_env("coordination", {"n_agents": 3}, n_envs=4, seed=0)
    check_env_specs(env)
    rollout = env.rollout(4, break_when_any_done=False)
    assert rollout.get(("next", "terminated"))[:, -1].all() and not rollout.get(("next", "terminated"))[:, :-1].any()
    with pytest.raises(ValueError, match=r"data.env_kwargs.n_actions must be an integer >= 1"):
        check_env_config("coordination", {"n_actions": 0})
    with pytest.raises(ValueError, match=r"env_kwargs.n_action: not a setting of env 'coordination'"):
        check_env_config("coordination", {"n_action": 2})


@pytest.mark.parametrize("variant", ["iac", "iac_dmac"])
def test_the_toy_family_trains_through_the_cli_and_learns_to_coordinate(variant, toy_extensions, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    iac, iac_dmac, coordination = write_configs(tmp_path)
    algorithm_file = iac if variant == "iac" else iac_dmac
    main([
        "fit", "--config", coordination, "--config", algorithm_file,
        "--model.init_args.lr_actor", "3e-3", "--data.max_env_steps", "4800", "--seed_everything", "1",
        "--evaluation.episodes", "200",  # the final ratio within about 0.01: measured 0.975-1.0 on seeds 1-4
        "--trainer.enable_progress_bar", "false",
    ])
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "coordination" / ("IacDmac" if variant == "iac_dmac" else "Iac") / "version_0"))
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt"))
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/critic", "loss/actor", "eval/return_ratio"} <= tags
    assert ("dmac/kl_pi_rho" in tags) == (variant == "iac_dmac")
    ratios = [e.value for e in events.Scalars("eval/return_ratio")]
    # Uniform play coordinates a third of the time; the trained policies nearly always.
    assert ratios[0] < 0.6 and ratios[-1] >= 0.9, ratios
