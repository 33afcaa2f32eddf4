"""Single-file PPO in the CleanRL style, learning against NPCs through ``nw.make_vector_env``.

The learner plays the predators of mpe2 ``simple_tag`` (by default) against the prey checkpoint
shipped with npc-wrapper; the NPC runs inside the vector env, so the training loop below is plain
single-agent PPO over ``num_envs * n_train`` slots. Slots of agents that died (padding
transitions) are masked out of the loss, and a time-limit truncation is bootstrapped from the value
of ``infos["final_obs"]`` (every simple_tag episode ends that way; CleanRL's ppo.py treats it as a
termination).

    python scripts/cleanrl_ppo_npc.py --total-timesteps 200000
    python scripts/cleanrl_ppo_npc.py --npc random --training-agents-pct 0.25 --env-id simple_tag_v3
    python scripts/cleanrl_ppo_npc.py --help

The trained actor is saved as TorchScript (observations -> logits), which npc-wrapper loads as an
NPC: ``npc="file://runs/<run>/actor.pt"`` with ``trusted=True`` (TorchScript is code).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # run from a checkout without installing, as the other scripts do
    sys.path.insert(0, str(_REPO_ROOT))

import npc_wrapper as nw
from npc_wrapper.cli.config import data_path
from npc_wrapper.cli.envs import pad_observations
from npc_wrapper.cli.errors import CLIError, one_line, with_trust_flag
from npc_wrapper.cli.threads import torch_threads
from npc_wrapper.cli.tracking import choose_wandb_mode
from npc_wrapper.errors import CheckpointError

__all__ = ["Args", "Agent", "make_env", "parse_args", "truncation_bootstrap", "train", "main"]

#: The environment the shipped NPC (``--npc default``) was trained on.
DEFAULT_NPC_ENV = "simple_tag_v3"


@dataclass
class Args:
    exp_name: str = "cleanrl_ppo_npc"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (envs, NPCs, torch, numpy)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""
    torch_threads: int | None = None
    """torch's CPU threads (None: 1 on the CPU, torch's default on CUDA), as npc-train's"""
    track: bool = False
    """if toggled, the run is tracked with Weights & Biases (offline without an API key)"""
    wandb_project_name: str = "npc-wrapper"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the wandb entity (team)"""
    output_dir: str = "runs"
    """where the run directory (TensorBoard logs and the saved actor) is created"""

    env_id: str = "simple_tag_v3"
    """the mpe2 scenario module whose parallel_env is played (simple_tag_v3, simple_spread_v3...)"""
    max_cycles: int = 25
    """episode length of the mpe2 scenario"""
    npc: str = "default"
    (
        "the NPC: 'default' (the simple_tag_v3 prey shipped with the package), 'random', 'noop', "
        "or a checkpoint"
    )
    training_agents_pct: float = 0.75
    """fraction of each env's agents that train (0.75 of simple_tag: the three predators)"""
    npc_trusted: bool = False
    """allow NPC checkpoint formats that run code: pickles, TorchScript (only for checkpoints you trust)"""

    total_timesteps: int = 200_000
    """total training-agent steps of the experiment"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer (npc-train's ppo trainer: 3e-4, constant)"""
    num_envs: int = 8
    """the number of PettingZoo envs (each gives one slot per training agent)"""
    num_steps: int = 128
    """the number of steps per slot in each rollout"""
    anneal_lr: bool = False
    """toggle learning-rate annealing (on in CleanRL; off here, as in npc-train's SB3 PPO)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of the generalized advantage estimate"""
    bootstrap_truncated: bool = True
    """add gamma * V(final_obs) to the reward of a time-limit truncation (CleanRL's ppo.py does not)"""
    num_minibatches: int = 12
    """the number of mini-batches (12: 256 steps each with the defaults, npc-train's batch_size)"""
    update_epochs: int = 10
    """the K epochs to update the policy (npc-train's n_epochs)"""
    norm_adv: bool = True
    """toggle advantage normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = False
    """toggle the clipped value loss, as in the PPO paper (off, as SB3's clip_range_vf=None)"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the value function loss"""
    max_grad_norm: float = 0.5
    """the maximum norm for gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold (None: no early stop)"""

    batch_size: int = 0
    """the batch size (computed in runtime: num_slots * num_steps)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (what CleanRL's tyro shows as help)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value
    return docs


def parse_args(argv: list[str] | None = None) -> Args:
    """``Args`` from the command line (``--total-timesteps 1000``, ``--no-cuda``), with field docstrings as help."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    docs = _field_docs(Args)
    for f in dataclasses.fields(Args):
        if f.name in ("batch_size", "minibatch_size", "num_iterations"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=docs.get(f.name)
            )
            continue
        base = {"int": int, "float": float}.get(kind.split(" |")[0], str)
        convert = (lambda s, b=base: None if s.lower() == "none" else b(s)) if "None" in kind else base
        parser.add_argument(flag, type=convert, default=f.default, help=docs.get(f.name))
    return Args(**vars(parser.parse_args(argv)))


def make_env(env_id: str, max_cycles: int) -> Any:
    """A padded mpe2 parallel env (every agent observes the same shape, as the shipped NPC expects)."""
    module = importlib.import_module(f"mpe2.{env_id}")
    return pad_observations(module.parallel_env(max_cycles=max_cycles, continuous_actions=False))


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """CleanRL's MLP actor-critic (64-64, tanh)."""

    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, n_actions), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def _ended_episodes(infos: dict[str, Any], slots: nw.SlotMap) -> list[dict[str, Any]]:
    """The episode summaries (``infos["npc_wrapper/episode"]``) of envs that ended this step, one per env."""
    key = nw.EPISODE_KEY
    ep = infos.get(key)
    mask = infos.get("_" + key)
    if ep is None or mask is None:
        return []
    return [
        {
            "train_return": float(ep["train_return"][k]),
            "npc_return": float(ep["npc_return"][k]),
            "outcome": str(ep["outcome"][k]),
        }
        for k in np.flatnonzero(mask)
        if slots.agent(int(k)) == 0
    ]


def truncation_bootstrap(
    reward: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    infos: dict[str, Any],
    value: Any,
    gamma: float,
) -> np.ndarray:
    """``reward`` plus ``gamma * value(final_obs)`` on the slots truncated without terminating.

    The GAE below treats every done as the end of the return; for a time limit the episode only
    stopped being observed, so its return continues with the value of the state it stopped in
    (``infos["final_obs"]``, SAME_STEP autoreset), as SB3 does with ``TimeLimit.truncated``.
    """
    cut = np.flatnonzero(truncations & ~terminations)
    if len(cut) == 0:
        return reward
    final_obs = np.stack(infos["final_obs"][cut])
    reward = reward.astype(np.float64, copy=True)
    reward[cut] += gamma * np.asarray(value(final_obs), dtype=np.float64).reshape(-1)
    return reward


def train(args: Args) -> dict[str, Any]:
    """Run PPO as configured, with ``args.torch_threads`` torch threads; return the run directory, the
    saved actor and the win rates logged at each iteration."""
    if args.torch_threads is not None and args.torch_threads < 1:
        raise CLIError(f"--torch-threads must be >= 1 (or None: 1 on the CPU), got {args.torch_threads}")
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    with torch_threads(args.torch_threads, device.type):
        return _train(args, device)


def _train(args: Args, device: torch.device) -> dict[str, Any]:
    """:func:`train` on ``device``, with the thread count set."""
    if args.npc == "default" and args.env_id != DEFAULT_NPC_ENV:
        raise CLIError(
            f"--npc default is the prey shipped for {DEFAULT_NPC_ENV}, which does not fit "
            f"--env-id {args.env_id}: "
            f"pass --npc random (or noop) or a checkpoint trained on {args.env_id}"
        )
    npc = data_path("simple_tag_npc.zip") if args.npc == "default" else args.npc
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.output_dir) / run_name
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    envs = nw.make_vector_env(
        functools.partial(make_env, args.env_id, args.max_cycles),
        num_envs=args.num_envs,
        npc=npc,
        training_agents_pct=args.training_agents_pct,
        device=device,
        trusted=args.npc_trusted,
    )
    num_slots = envs.num_envs
    args.batch_size = num_slots * args.num_steps
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)
    obs_shape = envs.single_observation_space.shape
    print(
        f"training {envs.training_agents} vs NPC {envs.npc_agents} ({npc}); {num_slots} slots, "
        f"{args.num_iterations} iterations of {args.batch_size} steps, "
        f"{torch.get_num_threads()} torch thread(s)"
    )

    from torch.utils.tensorboard import SummaryWriter

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            dir=str(Path(args.output_dir)),
            save_code=True,
            mode=choose_wandb_mode(),  # as npc-train: WANDB_MODE, else online with an API key, else offline
        )
    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )

    agent = Agent(int(np.prod(obs_shape)), int(envs.single_action_space.n)).to(device)

    def value_of(o: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.get_value(torch.as_tensor(o, dtype=torch.float32, device=device)).cpu().numpy()
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    obs = torch.zeros((args.num_steps, num_slots, *obs_shape), device=device)
    actions = torch.zeros((args.num_steps, num_slots), device=device)
    logprobs = torch.zeros((args.num_steps, num_slots), device=device)
    rewards = torch.zeros((args.num_steps, num_slots), device=device)
    dones = torch.zeros((args.num_steps, num_slots), device=device)
    alive = torch.zeros((args.num_steps, num_slots), device=device)
    values = torch.zeros((args.num_steps, num_slots), device=device)

    global_step = 0
    start_time = time.time()
    next_obs_np, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
    next_done = torch.zeros(num_slots, device=device)
    recent: list[dict[str, Any]] = []
    history: list[dict[str, float]] = []

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (
                1.0 - (iteration - 1.0) / args.num_iterations
            ) * args.learning_rate

        for step in range(args.num_steps):
            global_step += num_slots
            obs[step] = next_obs
            dones[step] = next_done
            # A dead agent's slot holds padding until its env resets: keep it out of the loss.
            alive[step] = torch.as_tensor(envs.slot_alive(), dtype=torch.float32, device=device)
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            if args.bootstrap_truncated:
                reward = truncation_bootstrap(reward, terminations, truncations, infos, value_of, args.gamma)
            next_done = torch.as_tensor(
                np.logical_or(terminations, truncations), dtype=torch.float32, device=device
            )
            rewards[step] = torch.as_tensor(reward, device=device).view(-1)
            next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
            recent.extend(_ended_episodes(infos, envs.slots))

        # GAE; a done slot's next observation starts a new episode, so nothing is bootstrapped across it
        # (a truncation's bootstrap is in its reward already, with --bootstrap-truncated).
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards, device=device)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                )
            returns = advantages + values

        b_obs = obs.reshape((-1, *obs_shape))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)
        b_alive = alive.reshape(-1)

        def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return (x * m).sum() / m.sum().clamp(min=1.0)

        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb_inds = b_inds[start : start + args.minibatch_size]
                m = b_alive[mb_inds]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions.long()[mb_inds]
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = masked_mean(-logratio, m)
                    approx_kl = masked_mean((ratio - 1) - logratio, m)
                    clipfracs.append(masked_mean(((ratio - 1.0).abs() > args.clip_coef).float(), m).item())

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv:
                    mean = masked_mean(mb_advantages, m)
                    std = masked_mean((mb_advantages - mean) ** 2, m).sqrt()
                    mb_advantages = (mb_advantages - mean) / (std + 1e-8)

                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), m)

                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), m)
                else:
                    v_loss = 0.5 * masked_mean((newvalue - b_returns[mb_inds]) ** 2, m)

                entropy_loss = masked_mean(entropy, m)
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        if recent:
            win = float(np.mean([e["outcome"] == "win" for e in recent]))
            train_ret = float(np.mean([e["train_return"] for e in recent]))
            npc_ret = float(np.mean([e["npc_return"] for e in recent]))
            writer.add_scalar("npc/win_rate", win, global_step)
            writer.add_scalar("npc/train_team_return", train_ret, global_step)
            writer.add_scalar("npc/npc_team_return", npc_ret, global_step)
            history.append(
                {
                    "step": global_step,
                    "win_rate": win,
                    "train_return": train_ret,
                    "npc_return": npc_ret,
                    "episodes": len(recent),
                }
            )
            print(
                f"iteration {iteration}/{args.num_iterations} step {global_step}: win rate {win:.2f}, "
                f"training-team return {train_ret:.2f}, NPC-team return {npc_ret:.2f} "
                f"({len(recent)} episodes), SPS {sps}"
            )
            recent = []

    envs.close()
    if history:
        first, last = history[0], history[-1]
        print(
            f"first -> last iteration: win rate {first['win_rate']:.2f} -> {last['win_rate']:.2f}, "
            f"training-team return {first['train_return']:.1f} -> {last['train_return']:.1f}, "
            f"NPC-team return {first['npc_return']:.1f} -> {last['npc_return']:.1f}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    actor_path = run_dir / "actor.pt"
    torch.jit.script(agent.actor.cpu().eval()).save(str(actor_path))
    print(
        f"saved the actor (TorchScript, observations -> logits) to {actor_path}; use it as an NPC with "
        f"npc='file://{actor_path}', trusted=True"
    )
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
        wandb.tensorboard.unpatch()  # finish() leaves TensorBoard patched for the rest of the process
    return {"run_dir": run_dir, "actor": actor_path, "history": history}


def main(argv: list[str] | None = None) -> None:
    """Train as the command line says; bad input (or an NPC that cannot be loaded) is one line on stderr."""
    try:
        train(parse_args(argv))
    except (CLIError, CheckpointError) as e:
        print(
            f"{Path(__file__).name}: error: {with_trust_flag(one_line(e), '--npc-trusted')}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
