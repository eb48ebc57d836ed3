"""How far a trained policy's value of the last observation before a time limit is from its value of the final
observation, on the navigation curriculum: one JSON line.

At a truncation the advantages bootstrap from ``V(s_{T-1})`` in place of ``V(s_T)`` (``metta.rl.advantage``:
an auto-resetting env has replaced ``s_T`` by the next episode's first observation). Here the env does not
reset (``auto_reset=False``), so ``s_T`` is still there after the last step, and the policy, carrying its
LSTM state, gives both values. ``mean_abs_gap`` is the error of the stand-in, ``mean_abs_final_value`` the error
of treating the time limit as a terminal (which bootstraps from 0); both enter the target multiplied by gamma.

    python benchmarks/truncation_gap.py POLICY [--num-envs 32] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

CURRICULUM = "/env/mettagrid/curriculum/navigation/bucketed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="a policy file saved by recipes/navigation_cpu.py or run.py")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from metta.agent.policy_state import PolicyState
    from metta.agent.policy_store import PolicyStore
    from metta.mettagrid.env import MettaGridEnv

    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(Path(args.policy).parent)}}})
    policy = store.policy_record(args.policy).policy
    policy.eval()
    # Not training: no desynchronised first episodes, so every env reaches its time limit at the same step.
    env = MettaGridEnv(CURRICULUM, num_envs=args.num_envs, is_training=False, auto_reset=False)
    obs, _ = env.reset(seed=args.seed)
    state = PolicyState()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        while True:
            actions, _, _, value_before, _ = policy(torch.from_numpy(obs), state)
            obs, _, terminals, truncations, _ = env.step(actions.numpy().astype(np.int32))
            if (terminals | truncations).all():
                break
        _, _, _, value_final, _ = policy(torch.from_numpy(obs), state)  # s_T, from the episode's own LSTM state
    env.close()
    before, final = value_before.view(-1).double(), value_final.view(-1).double()
    gap = (final - before).abs()
    print(
        json.dumps(
            {
                "benchmark": "truncation_gap",
                "policy": args.policy,
                "agents": int(final.numel()),
                "truncated": bool(truncations.all()),
                "mean_final_value": round(float(final.mean()), 4),
                "mean_abs_final_value": round(float(final.abs().mean()), 4),
                "mean_abs_gap": round(float(gap.mean()), 4),
                "max_abs_gap": round(float(gap.max()), 4),
                "gap_correlation": round(float(torch.corrcoef(torch.stack([before, final]))[0, 1]), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
