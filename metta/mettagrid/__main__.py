"""Run MettaGrid with random actions and print episode stats: ``python -m metta.mettagrid [--help]``.

A quick check that the environment works on this machine, and a look at what an episode reports.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metta.mettagrid", description=__doc__)
    parser.add_argument(
        "--config",
        default="/env/mettagrid/curriculum/navigation/bucketed",
        help="a packaged config path (e.g. /env/mettagrid/mettagrid) or a YAML file (default: %(default)s)",
    )
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=4, help="stop after this many episodes end")
    parser.add_argument("--max-steps", type=int, default=None, help="override game.max_steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="print env 0's map at the start and the end")
    args = parser.parse_args(argv)

    from metta.mettagrid.curriculum.loader import curriculum_from_config_path
    from metta.mettagrid.env import MettaGridEnv

    overrides = {"game.max_steps": args.max_steps} if args.max_steps is not None else None
    curriculum = curriculum_from_config_path(args.config, overrides)
    env = MettaGridEnv(curriculum, num_envs=args.num_envs)
    env.reset(seed=args.seed)
    print(f"{args.config}: {env.num_envs} envs x {env.agents_per_env} agents, actions {env.action_names}")
    if args.render:
        print(env.render(0))
    rng = np.random.default_rng(args.seed)
    max_args = np.array(env.max_action_args)
    finished: list[dict] = []
    steps = 0
    start = time.perf_counter()
    while len(finished) < args.episodes:
        types = rng.integers(0, len(max_args), env.num_agents)
        actions = np.stack([types, rng.integers(0, max_args[types] + 1)], axis=1).astype(np.int32)
        _, _, _, _, infos = env.step(actions)
        steps += 1
        for info in infos:
            finished.append(info)
            print(
                f"episode {len(finished)}: reward {info['episode_reward']:.3f}, steps {info['episode_length']}, "
                f"map {info['attributes']['map_h']}x{info['attributes']['map_w']}, "
                f"hearts {info['agent'].get('heart.gained', 0.0):.2f}/agent"
            )
    elapsed = time.perf_counter() - start
    if args.render:
        print(env.render(0))
    summary = {
        "episodes": len(finished),
        "mean_episode_reward": float(np.mean([i["episode_reward"] for i in finished])),
        "agent_steps": steps * env.num_agents,
        "agent_steps_per_second": round(steps * env.num_agents / elapsed),
        "last_episode_agent_stats": finished[-1]["agent"],
        "last_episode_game_stats": finished[-1]["game"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
