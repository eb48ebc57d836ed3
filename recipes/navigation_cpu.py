"""Train the fast_cpu agent on the navigation curriculum on a CPU for a fixed wall-clock budget.

Writes one JSON object per epoch to ``{out_dir}/metrics.jsonl`` (agent steps, wall time, mean episode
reward, SPS, losses) and, first, the mean episode reward of the two scripted baselines (``metta.sim.baselines``:
random, and nearest-visible-altar), so the curve can be read against them; at the end the trained policy and both
baselines are scored on the same 512 episodes (the curriculum's tasks drawn uniformly, see ``evaluation_curriculum``):

    python recipes/navigation_cpu.py --minutes 10 --out-dir train_dir/navigation_cpu
    python recipes/navigation_cpu.py --evaluate train_dir/navigation_cpu/navigation_cpu_e300   # score again
    python recipes/navigation_cpu.py --minutes 60 --save-every-minutes 10   # and a policy every 10 minutes
    python recipes/navigation_cpu.py --evaluate POLICY --breakdown   # per terrain set and size, and action counts

This is the learning check of the PPO core (metta/rl); ``run.py`` is the full production loop.

The defaults are run.py's CPU settings (the ``fast_cpu`` agent, ``cpu_learning_settings()``, batch 32768,
minibatch 2048), which came from sweeping this script and run.py; docs/training.md has the measurements (6.3x to
10.9x the random policy's reward over seeds 0 to 4, mean 7.4x, at 8.3M agent steps, what ten minutes made on a
slower day; with ``--agent fast`` and the value loss clipped, after an hour 18.8x and 14.9x on seeds 0 and 1,
0.63 and 0.48 of the nearest-visible-altar script) and the sweep. With the default constant learning rate a run
is deterministic for its seed, settings and number of epochs, so two runs of one seed differ only by how many
epochs the machine fits in the time. ``--lr-schedule`` follows the agent steps when ``--max-steps`` is given (the
run stays deterministic), else the wall clock (the run is then not).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metta.agent.agent_config import AGENT_CONFIGS
from metta.agent.metta_agent import make_policy
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_state import PolicyState
from metta.agent.policy_store import PolicyStore
from metta.interface.environment import Environment
from metta.mettagrid.config_loader import load_config_dict
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.env import MettaGridEnv
from metta.rl.epoch_metrics import epoch_metrics
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.losses import Losses
from metta.rl.optimizer import Optimizer, scheduled_learning_rate, set_learning_rate
from metta.rl.run_config import TrainingConfig
from metta.rl.trainer_config import LRSchedulerConfig, TrainerConfig, cpu_learning_settings
from metta.sim.baselines import make_baseline

CURRICULUM = "/env/mettagrid/curriculum/navigation/bucketed"
BASELINES = ("random", "nearest_altar")  # scored beside every trained policy, on the same episodes


def evaluation_curriculum() -> Curriculum:
    """The training curriculum's 64 tasks drawn uniformly (``rand_task_rate`` 1, every task active). Its draws
    never depend on the rewards, so with one seed every policy plays exactly the same episodes."""
    raw = load_config_dict(CURRICULUM)
    return curriculum_from_any({**raw, "rand_task_rate": 1.0, "num_active_tasks": 64})


def play(
    policy: torch.nn.Module | str, num_envs: int, seed: int, episodes: int, curriculum: Curriculum | None = None
) -> list[dict]:
    """The env's info of each of the first ``episodes`` episodes of ``curriculum`` (default
    ``evaluation_curriculum()``; the same episodes for every policy). ``policy`` is a trained policy or a scripted
    baseline's name ("random", "nearest_altar": ``metta.sim.baselines``), whose draws come from torch's generator
    seeded with ``seed``."""
    env = MettaGridEnv(curriculum or evaluation_curriculum(), num_envs=num_envs, is_training=False)
    obs, _ = env.reset(seed=seed)
    done = np.zeros(env.num_agents, dtype=bool)
    scripted = make_baseline(policy).bind(env) if isinstance(policy, str) else None
    state = PolicyState()
    finished: list[dict] = []
    with torch.random.fork_rng(), torch.no_grad():  # the baselines' draws leave the caller's generator alone
        torch.manual_seed(seed)
        while len(finished) < episodes:
            if scripted is not None:
                actions = scripted.act(obs)
            else:
                state.reset_done(torch.from_numpy(done))
                actions = policy(torch.from_numpy(obs), state)[0].numpy().astype(np.int32)
            obs, _, terminals, truncations, infos = env.step(actions)
            done = terminals | truncations
            finished += infos
    env.close()
    return finished[:episodes]


def evaluate(
    policy: torch.nn.Module | str, num_envs: int, seed: int, episodes: int, curriculum: Curriculum | None = None
) -> float:
    """Mean episode reward over the episodes of ``play`` (same arguments)."""
    return float(np.mean([info["episode_reward"] for info in play(policy, num_envs, seed, episodes, curriculum)]))


def breakdown(infos: list[dict]) -> dict:
    """Where a policy scores and what its agents do, over finished episodes' infos: the mean episode reward per
    map label (``map_reward``: the terrain set, e.g. ``dense_large``, and the size, e.g. ``large``), the episodes
    per label, and each agent stat's mean per agent per episode (``agent``: e.g. ``action.move.failed``)."""
    by_label: dict[str, list[float]] = {}
    for info in infos:
        for key in info:
            if key.startswith("map_reward/"):
                by_label.setdefault(key.removeprefix("map_reward/"), []).append(info["episode_reward"])
    stats = sorted({name for info in infos for name in info["agent"]})
    return {
        "episode_reward": float(np.mean([info["episode_reward"] for info in infos])),
        "map_reward": {label: float(np.mean(rewards)) for label, rewards in sorted(by_label.items())},
        "episodes": {label: len(rewards) for label, rewards in sorted(by_label.items())},
        "agent": {name: float(np.mean([info["agent"].get(name, 0.0) for info in infos])) for name in stats},
    }


def score(
    policy: torch.nn.Module,
    num_envs: int,
    seed: int,
    episodes: int,
    curriculum: Curriculum | None = None,
    baselines: dict[str, float] | None = None,
) -> dict:
    """The policy and both scripted baselines on the same episodes, side by side: every figure we publish
    stands next to random and nearest-visible-altar. ``baselines`` (name -> mean episode reward) reuses scores
    already taken with the same arguments."""
    rewards = baselines or {name: evaluate(name, num_envs, seed, episodes, curriculum) for name in BASELINES}
    trained = evaluate(policy, num_envs, seed, episodes, curriculum)
    return {
        "eval_seed": seed,
        "episodes": episodes,
        "trained_policy_episode_reward": trained,
        **{f"{name}_policy_episode_reward": reward for name, reward in rewards.items()},
        "ratio": trained / max(rewards["random"], 1e-9),
        "ratio_to_nearest_altar": trained / max(rewards["nearest_altar"], 1e-9),
    }


def load_saved(path: str) -> PolicyRecord:
    """A policy that a run of this recipe saved (its file path)."""
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(Path(path).parent)}}})
    return store.policy_record(path)


def evaluate_saved(
    paths: list[str], num_envs: int, seed: int, episodes: int, curriculum: Curriculum | None = None
) -> list[dict]:
    """Saved policies (``--evaluate PATH [PATH ...]``) against both baselines, all on the same episodes: the
    baselines are scored once, then each policy (a learning curve from ``--save-every-minutes``)."""
    baselines = {name: evaluate(name, num_envs, seed, episodes, curriculum) for name in BASELINES}
    results = []
    for path in paths:
        record = load_saved(path)
        saved = {k: record.metadata[k] for k in ("agent_step", "seconds") if k in record.metadata}
        results.append(
            {"policy": path, **saved, **score(record.policy.eval(), num_envs, seed, episodes, curriculum, baselines)}
        )
    return results


def _key_value(item: str) -> tuple[str, object]:
    key, sep, text = item.partition("=")
    if not sep:
        raise SystemExit(f"--ppo {item!r}: write KEY=VALUE, e.g. clip_vloss=false")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main() -> None:
    defaults = cpu_learning_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out-dir", default="train_dir/navigation_cpu")
    parser.add_argument(
        "--agent",
        choices=sorted(AGENT_CONFIGS),
        default=TrainingConfig().agent.name,  # run.py's CPU default: fast_cpu
        help="the policy graph (metta.agent.agent_config); the default, run.py's, learns most in runs of minutes",
    )
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--minibatch-size", type=int, default=2048)
    parser.add_argument("--bptt-horizon", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=defaults["optimizer"]["learning_rate"])
    parser.add_argument("--update-epochs", type=int, default=defaults["update_epochs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many agent steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ent-coef", type=float, default=defaults["ppo"]["ent_coef"])
    parser.add_argument("--gamma", type=float, default=defaults["ppo"]["gamma"])
    parser.add_argument("--gae-lambda", type=float, default=defaults["ppo"]["gae_lambda"])
    parser.add_argument(
        "--lr-schedule",
        choices=["constant", "linear", "cosine"],
        default="constant",
        help="learning-rate schedule over the budget: agent steps / --max-steps when --max-steps is given "
        "(repeatable), else elapsed / --minutes",
    )
    parser.add_argument(
        "--ppo",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more PPOConfig fields, e.g. --ppo clip_vloss=false vf_coef=0.5 (values are read as JSON, else text)",
    )
    parser.add_argument("--eval-episodes", type=int, default=512, help="episodes for each policy's evaluation")
    parser.add_argument(
        "--evaluate",
        nargs="+",
        metavar="POLICY",
        help="only evaluate these saved policies (files a run saved), beside the baselines scored once",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="with --evaluate: print instead, for both baselines and each policy, the mean episode reward, the mean "
        "reward per map label (terrain set and size) and the agents' action counts per episode, on the same episodes",
    )
    parser.add_argument(
        "--save-every-minutes",
        type=float,
        default=None,
        metavar="M",
        help="also save the policy every M minutes of training (navigation_cpu_t{minutes}m), for a learning "
        "curve scored afterwards with --evaluate",
    )
    args = parser.parse_args()
    if args.save_every_minutes is not None and args.save_every_minutes <= 0:
        parser.error(f"--save-every-minutes {args.save_every_minutes:g}: give a positive number of minutes")
    if args.breakdown and not args.evaluate:
        parser.error("--breakdown goes with --evaluate POLICY [POLICY ...]")
    if args.evaluate:
        if args.breakdown:
            policies = [(name, name) for name in BASELINES]
            policies += [(path, load_saved(path).policy.eval()) for path in args.evaluate]
            for name, policy in policies:
                infos = play(policy, args.num_envs, args.seed + 1, args.eval_episodes)
                print(json.dumps({"policy": name, "eval_seed": args.seed + 1, **breakdown(infos)}), flush=True)
            return
        for result in evaluate_saved(args.evaluate, args.num_envs, args.seed + 1, args.eval_episodes):
            print(json.dumps(result), flush=True)
        return

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / "metrics.jsonl").open("w")

    baselines = {name: evaluate(name, args.num_envs, args.seed + 1, args.eval_episodes) for name in BASELINES}
    metrics.write(json.dumps({f"{name}_policy_episode_reward": r for name, r in baselines.items()}) + "\n")
    print("scripted baselines: " + ", ".join(f"{name} {r:.4f}" for name, r in baselines.items()))

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TrainerConfig(
        total_timesteps=10**12,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=args.update_epochs,
        ppo={
            **defaults["ppo"],
            "ent_coef": args.ent_coef,
            "gamma": args.gamma,
            "gae_lambda": args.gae_lambda,
            **dict(_key_value(item) for item in args.ppo),
        },
        optimizer={"learning_rate": args.learning_rate},
    )
    env = Environment(
        curriculum_path=CURRICULUM, num_envs=args.num_envs, seed=args.seed, is_training=True, device="cpu"
    )
    policy = make_policy(env, args.agent)
    experience = make_experience(env, policy, cfg, "cpu")
    optimizer = Optimizer(
        "adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=cfg.ppo.max_grad_norm
    )
    losses = Losses()
    schedule = LRSchedulerConfig(
        enabled=args.lr_schedule != "constant",
        schedule_type=None if args.lr_schedule == "constant" else args.lr_schedule,
    )
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(out)}}})

    def save(name: str) -> None:
        """The policy with the policy store, so it can be evaluated again or watched in a replay."""
        record = store.create_empty_policy_record(name)
        record.policy = policy
        record.metadata.update(agent_step=agent_step, epoch=epoch, seconds=round(time.perf_counter() - start, 1))
        store.save(record)

    agent_step, epoch = 0, 0
    start = time.perf_counter()
    next_save = args.save_every_minutes
    while time.perf_counter() - start < args.minutes * 60 and agent_step < (args.max_steps or float("inf")):
        t0 = time.perf_counter()
        agent_step_before = agent_step
        agent_step, stats = rollout(policy, env, experience, "cpu", agent_step)
        # Over agent steps when a step budget is given (as run.py's schedule does: the steps before this batch's
        # rollout, so the run stays deterministic for its seed), else over the wall clock.
        if args.max_steps:
            progress = agent_step_before / args.max_steps
        else:
            progress = (time.perf_counter() - start) / (args.minutes * 60)
        set_learning_rate(optimizer, scheduled_learning_rate(args.learning_rate, schedule, progress))
        epoch = train_ppo(policy, optimizer, experience, "cpu", losses, epoch, cfg, agent_step=agent_step)
        # The row every loop logs (metta.rl.epoch_metrics): overview/sps, overview/reward, losses/*,
        # parameters/learning_rate and env_<stat> (e.g. env_agent/action.move.success, what the agents do).
        row = {
            "epoch": epoch,
            "agent_step": agent_step,
            "seconds": round(time.perf_counter() - start, 1),
            **epoch_metrics(
                stats, losses, experience, optimizer, agent_step - agent_step_before, time.perf_counter() - t0
            ),
        }
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if "overview/reward" in row:
            print(
                f"epoch {epoch} step {agent_step} t={row['seconds']}s reward {row['overview/reward']:.4f} sps "
                f"{row['overview/sps']:.0f}"
            )
        if next_save is not None and row["seconds"] >= next_save * 60:
            save(f"navigation_cpu_t{next_save:g}m")
            next_save += args.save_every_minutes
    env.close()
    policy.eval()
    save(f"navigation_cpu_e{epoch}")
    # The baselines were scored at the start on these very episodes (same envs, seed and count).
    summary = {
        **score(policy, args.num_envs, args.seed + 1, args.eval_episodes, baselines=baselines),
        "agent_step": agent_step,
    }
    summary["minutes"] = args.minutes
    metrics.write(json.dumps({"final_evaluation": summary}) + "\n")
    metrics.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
