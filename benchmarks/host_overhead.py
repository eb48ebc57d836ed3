"""The host's work per minibatch update and per rollout step, counted in torch ops and device reads: one JSON line.

On a GPU the learner is bound by the host launching kernels (some 5-20 us per op), not by the device, so the
number of ops a minibatch update or a rollout step dispatches is its cost; counted on a CPU it is the same
number. This script runs the real loop (``rollout`` and ``train_ppo``) on the navigation curriculum with the
GPU sizes' shapes shrunk to run in a minute on a CPU (bptt 64, rows of real episodes, so episode starts fall
inside rows as navigation makes them) and reports, for the CPU code paths and for the GPU code paths run on
the CPU (``--paths``):

- ``minibatch``: ops, scalar reads and host syncs per minibatch update (``train_ppo``'s learn phase: the
  minibatch's loss, backward and optimizer step), and host ms per minibatch (the learn phase's wall time; on
  a CPU that includes the arithmetic);
- ``update_extra``: what one update (one epoch) adds beyond its minibatches' learn phases: advantages, the
  minibatches' slicing, statistics, explained variance;
- ``rollout_step``: per step of a rollout (everything but the env's own stepping), with ``forward`` the
  inference part; ``host_ms`` the step's wall time without the env;
- ``inference``: one forward pass for ``--inference-agents`` agents (ops, host ms).

Counts come from ``metta.common.profiling.DispatchCounter`` (see it for what a scalar read and a host sync
are); timings come from separate, uncounted runs and are noisy on a shared machine, counts are not.

    python benchmarks/host_overhead.py [--paths cpu,gpu] [--num-envs 128] [--batch-size 32768]
        [--minibatch-size 16384] [--bptt-horizon 64] [--first-conv dense]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
import types

import torch

from metta.common.profiling.dispatch_counter import DispatchCounter
from metta.common.profiling.stopwatch import Stopwatch


@contextlib.contextmanager
def gpu_code_paths(policy):
    """The GPU forms of the compute on the CPU: the LSTM's single step as matrix products and the advantages
    in torch ops (the code picks both by device)."""
    import metta.rl.losses as losses_module
    import metta.rl.training as training_module
    from metta.agent.lib import lstm as lstm_module
    from metta.rl import advantage as adv

    def torch_advantage(values, rewards, dones, ratio, advantages, gamma, lam, rho, c, device=None, **kw):
        next_rows, tail = kw.get("next_rows"), kw.get("tail")
        if next_rows is None:
            return adv._advantage_torch(values, rewards, dones, ratio, advantages, gamma, lam, rho, c, tail)
        next_rows = adv._checked_next_rows(next_rows, values.shape[0])
        return adv._advantage_torch_chained(values, rewards, dones, ratio, advantages, gamma, lam, rho, c, next_rows)

    core = policy.components["_core_"]
    original_forward = core.forward

    def forward(self, td):
        if td["_T_"] == 1:
            x = td[self.sources[0]].view(td["_B_"], 1, -1).transpose(0, 1)
            h, c = td.get("lstm_h"), td.get("lstm_c")
            if h is not None:
                h, c = h.contiguous(), c.contiguous()
            out, (h, c) = self._one_step(x, h, c)
            td["lstm_h"], td["lstm_c"] = h.detach(), c.detach()
            td[self.name] = out.transpose(0, 1).reshape(td["_B_"], self.hidden_size)
            return
        original_forward(td)

    del lstm_module
    saved = (losses_module.compute_advantage, training_module.compute_advantage, policy.token_conv.product)
    losses_module.compute_advantage = training_module.compute_advantage = torch_advantage
    core.forward = types.MethodType(forward, core)
    policy.token_conv.product = "dense"
    try:
        yield
    finally:
        losses_module.compute_advantage, training_module.compute_advantage, policy.token_conv.product = saved
        core.forward = original_forward


def per(counts: dict[str, int], n: int) -> dict[str, float]:
    return {k: round(v / n, 1) for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--paths", default="cpu,gpu", help="code paths to measure: cpu, gpu or both")
    parser.add_argument("--agent", default="fast", choices=["fast", "interface_default"])
    parser.add_argument("--first-conv", default="dense", choices=["auto", "sparse", "bag", "dense"])
    parser.add_argument("--num-envs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--minibatch-size", type=int, default=16384)
    parser.add_argument("--bptt-horizon", type=int, default=64)
    parser.add_argument("--warmup-rollouts", type=int, default=2, help="rollouts before measuring (episodes desync)")
    parser.add_argument("--inference-agents", type=int, default=4096)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--top-ops", type=int, default=0, help="also list the N most frequent ops of each count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from metta.agent.metta_agent import make_policy
    from metta.agent.policy_state import PolicyState
    from metta.interface.environment import Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    cfg = TrainerConfig(
        total_timesteps=10**12,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=1,
    )
    env = Environment(curriculum_path=args.curriculum, num_envs=args.num_envs, seed=args.seed, device="cpu")
    policy = make_policy(env, config=args.agent, device=device)
    if args.first_conv != "auto":
        policy.token_conv.product = args.first_conv
    experience = make_experience(env, policy, cfg, device)
    optimizer = Optimizer("adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=0.5)
    losses = Losses()
    minibatches = experience.num_minibatches

    agent_step = 0
    for _ in range(args.warmup_rollouts):
        agent_step, _ = rollout(policy, env, experience, device, agent_step)
    starts = experience.dones.bool()[:, 1:]
    rows_per_mb = experience.minibatch_segments
    columns = [
        int(starts[i : i + rows_per_mb].any(0).sum()) for i in range(0, experience.segments, rows_per_mb)
    ]  # distinct steps with a start inside, per block of minibatch rows
    episode_starts = {
        "inside_rows": int(starts.sum()),
        "rows_with_one": int(starts.any(1).sum()),
        "rows": experience.segments,
        "distinct_steps_per_minibatch_rows": round(sum(columns) / len(columns), 1),
    }

    def contexts(path: str):
        return gpu_code_paths(policy) if path == "gpu" else contextlib.nullcontext()

    paths = [p for p in args.paths.split(",") if p]
    results: dict[str, dict] = {}
    for path in paths:
        with contexts(path):
            counter = DispatchCounter(record_ops=args.top_ops > 0)
            with counter:
                train_ppo(policy, optimizer, experience, device, losses, 0, cfg, agent_step=agent_step, timer=counter)
            learn = counter.phase("_train.learn")
            timer = Stopwatch()
            started = time.perf_counter()
            train_ppo(policy, optimizer, experience, device, losses, 0, cfg, agent_step=agent_step, timer=timer)
            update_s = time.perf_counter() - started
            results[path] = {
                "minibatch": {
                    **per(learn, minibatches),
                    "host_ms": round(timer.get_elapsed("_train.learn") / minibatches * 1000, 1),
                },
                "update_extra": {k: v - learn[k] for k, v in counter.totals().items()},
                "update_ms": round(update_s * 1000, 1),
            }
            if args.top_ops:
                results[path]["update_top_ops"] = dict(counter.op_names.most_common(args.top_ops))
    for path in paths:
        with contexts(path):
            counter = DispatchCounter(record_ops=args.top_ops > 0)
            with counter:
                agent_step, _ = rollout(policy, env, experience, device, agent_step, timer=counter)
            steps = experience.batch_size // env.agents_per_batch
            env_counts = counter.phase("_rollout.env")
            step_counts = {k: v - env_counts[k] for k, v in counter.totals().items()}
            timer = Stopwatch()
            started = time.perf_counter()
            agent_step, _ = rollout(policy, env, experience, device, agent_step, timer=timer)
            wall = time.perf_counter() - started
            results[path]["rollout_step"] = {
                **per(step_counts, steps),
                "forward": per(counter.phase("_rollout.forward"), steps),
                "host_ms": round((wall - timer.get_elapsed("_rollout.env")) / steps * 1000, 2),
                "agents": env.agents_per_batch,
            }
            if args.top_ops:
                results[path]["rollout_top_ops"] = dict(counter.op_names.most_common(args.top_ops))
            n = args.inference_agents
            flat_obs = experience.obs.view(-1, *experience.obs.shape[2:])
            obs = flat_obs[torch.arange(n) % flat_obs.shape[0]]
            h = torch.zeros(policy.core_num_layers, n, policy.hidden_size)

            def infer(obs=obs, h=h):
                with torch.no_grad():
                    policy(obs, PolicyState(lstm_h=h, lstm_c=h.clone()))

            counter = DispatchCounter()
            with counter:
                infer()
            infer()
            started = time.perf_counter()
            for _ in range(5):
                infer()
            results[path]["inference"] = {
                **counter.totals(),
                "host_ms": round((time.perf_counter() - started) / 5 * 1000, 2),
                "agents": n,
            }
    env.close()
    print(
        json.dumps(
            {
                "benchmark": "host_overhead",
                "paths": results,
                "episode_starts": episode_starts,
                "config": {
                    "curriculum": args.curriculum,
                    "agent": args.agent,
                    "first_conv": args.first_conv,
                    "num_envs": args.num_envs,
                    "agents": env.num_agents,
                    "batch_size": cfg.batch_size,
                    "minibatch_size": cfg.minibatch_size,
                    "bptt_horizon": cfg.bptt_horizon,
                    "minibatches_per_epoch": minibatches,
                },
                "machine": {
                    "cpu": platform.machine(),
                    "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
