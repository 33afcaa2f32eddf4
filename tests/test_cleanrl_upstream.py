"""CleanRL's ``ppo.py`` for Gymnasium 1.x runs on ``nw.make_vector_env`` with the README's lines.

The PPO below is written here in the shape of CleanRL's ``ppo.py`` on its Gymnasium 1.x branch
(vwxyzjn/cleanrl, ``gym-v1.1``): an ``Args`` dataclass whose batch sizes are computed before the env
exists, the tanh MLP actor-critic, the rollout buffers, GAE and the clipped PPO update, and episode
statistics read where that script reads them (``infos["final_info"]["episode"]``, masked by
``infos["final_info"]["_episode"]``). Its env setup is the README's diff, executed from the README
itself, so the documented lines and this loop cannot drift apart.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.optim as optim
from mpe2 import simple_tag_v3
from pettingzoo.utils import BaseParallelWrapper
from torch.distributions.categorical import Categorical

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class Args:
    """The fields of CleanRL's ``Args`` this loop uses, at its defaults but for a short run."""

    seed: int = 1
    num_envs: int = 4
    total_timesteps: int = 3072
    learning_rate: float = 2.5e-4
    num_steps: int = 128
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    batch_size: int = 0
    minibatch_size: int = 0
    num_iterations: int = 0


def readme_env_setup() -> str:
    """The added lines of the README's CleanRL diff: its imports, then its env setup (dedented)."""
    section = README.read_text().split("### CleanRL-style (Gymnasium `VectorEnv`)", 1)[1]
    diff = re.search(r"```diff\n(.*?)```", section, re.S)
    assert diff, "the README's CleanRL section has no diff block"
    added = [line[1:] for line in diff.group(1).splitlines() if line.startswith("+")]
    imports = [line for line in added if not line.startswith(" ")]
    body = textwrap.dedent("\n".join(line for line in added if line.startswith(" ")))
    assert imports and "nw.make_vector_env(" in body
    return "\n".join(imports) + "\n" + body


class RewardTally(BaseParallelWrapper):
    """Each agent's reward sum of every finished episode, as the PettingZoo env itself returned them."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.finished: dict[str, list[float]] = {a: [] for a in env.possible_agents}
        self._running: dict[str, float] = {}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple:
        self._running = {a: 0.0 for a in self.env.possible_agents}
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: dict) -> tuple:
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        for agent, r in rewards.items():
            self._running[agent] += float(r)
            if terms[agent] or truncs[agent]:
                self.finished[agent].append(self._running[agent])
                self._running[agent] = 0.0
        return obs, rewards, terms, truncs, infos


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Separate 64-64 tanh actor and critic, orthogonally initialised, as CleanRL's."""

    def __init__(self, envs: Any) -> None:
        super().__init__()
        n_obs = int(np.prod(envs.single_observation_space.shape))

        def mlp(n_out: int, std: float) -> nn.Sequential:
            return nn.Sequential(
                layer_init(nn.Linear(n_obs, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)), nn.Tanh(),
                layer_init(nn.Linear(64, n_out), std=std),
            )

        self.critic = mlp(1, 1.0)
        self.actor = mlp(int(envs.single_action_space.n), 0.01)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None) -> tuple:
        dist = Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(x)


def ppo(args: Args, envs: Any) -> dict[str, list[list[float]]]:
    """Train as CleanRL's ppo.py does; return each slot's logged episode returns and lengths (upstream
    writes the first done slot's of a step to TensorBoard; this keeps all of them, to check them)."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    agent = Agent(envs)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_shape = envs.single_observation_space.shape
    obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape)
    logprobs, rewards, dones, values = (torch.zeros((args.num_steps, args.num_envs)) for _ in range(4))
    logged: dict[str, list[list[float]]] = {
        key: [[] for _ in range(args.num_envs)] for key in ("r", "l", "top_r")
    }

    next_obs_np, _ = envs.reset(seed=args.seed)
    next_obs, next_done = torch.Tensor(next_obs_np), torch.zeros(args.num_envs)
    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate
        for step in range(args.num_steps):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs = torch.Tensor(next_obs_np)
            next_done = torch.Tensor(np.logical_or(terminations, truncations))

            if "final_info" in infos:  # where CleanRL's Gymnasium 1.x scripts read episode statistics
                for i in range(envs.num_envs):
                    if infos["final_info"]["_episode"][i]:
                        logged["r"][i].append(float(infos["final_info"]["episode"]["r"][i]))
                        logged["l"][i].append(float(infos["final_info"]["episode"]["l"][i]))
                        if "episode" in infos:  # gym.wrappers.vector.RecordEpisodeStatistics's
                            assert infos["_episode"][i]
                            logged["top_r"][i].append(float(infos["episode"]["r"][i]))

        with torch.no_grad():  # GAE
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0.0
            for t in reversed(range(args.num_steps)):
                nextnonterminal = 1.0 - (next_done if t == args.num_steps - 1 else dones[t + 1])
                nextvalues = next_value if t == args.num_steps - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + values

        b_obs, b_logprobs = obs.reshape((-1,) + obs_shape), logprobs.reshape(-1)
        b_actions, b_advantages = actions.reshape(-1), advantages.reshape(-1)
        b_returns, b_values = returns.reshape(-1), values.reshape(-1)
        b_inds = np.arange(args.batch_size)
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb = b_inds[start : start + args.minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions.long()[mb])
                ratio = (newlogprob - b_logprobs[mb]).exp()
                mb_adv = b_advantages[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                newvalue = newvalue.view(-1)
                v_loss_unclipped = (newvalue - b_returns[mb]) ** 2
                if args.clip_vloss:
                    delta_v = torch.clamp(newvalue - b_values[mb], -args.clip_coef, args.clip_coef)
                    v_clipped = b_values[mb] + delta_v
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * v_loss_unclipped.mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
    envs.close()
    return logged


@pytest.mark.parametrize("vector_statistics", [False, True], ids=["as_documented", "with_vector_wrapper"])
def test_cleanrl_ppo_logs_each_slots_episode_returns_as_the_env_summed_them(
    vector_statistics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = Args()
    args.batch_size = int(args.num_envs * args.num_steps)  # as ppo.py does, before the env exists
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    # Every simple_tag env the README's lambda makes sums its own rewards on the side.
    make_tag = simple_tag_v3.parallel_env
    monkeypatch.setattr(simple_tag_v3, "parallel_env", lambda **kwargs: RewardTally(make_tag(**kwargs)))
    scope: dict[str, Any] = {"args": args}
    exec(readme_env_setup(), scope)  # noqa: S102 - the README's own lines
    envs = scope["envs"]
    assert (args.num_envs, args.batch_size, args.num_iterations) == (12, 1536, 2)  # 4 envs x 3 predators
    slot_env = envs.slots.env_of
    slot_agent = [envs.training_agents[envs.slots.agent(k)] for k in range(envs.num_envs)]
    tallies = envs.get_attr("finished")  # each slot's env's tally (the same dict for an env's slots)
    if vector_statistics:
        envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # the README's optional line

    logged = ppo(args, envs)

    for k in range(args.num_envs):
        own = tallies[k][slot_agent[k]]
        assert len(own) == 2 * 128 // 25, f"slot {k} (env {slot_env[k]}) ended {len(own)} episodes"
        assert logged["r"][k] == pytest.approx(own), f"slot {k}'s logged returns are not its agent's"
        assert logged["l"][k] == [25.0] * len(own)
        assert logged["top_r"][k] == (pytest.approx(own) if vector_statistics else [])
    assert any(r > 0 for slot in logged["r"] for r in slot)  # the predators caught the prey now and then
