"""Policy cost: FLOPs per agent-step of a MettaAgent and its measured CPU throughput, printed as one JSON line.

FLOPs are counted with ``metta.agent.flops`` (torch's ``FlopCounterMode``, sparse products counted by their
stored entries) on real navigation observations; the counter does not see inside ``nn.LSTM``, so the LSTM's
matrix products (``2 * 4H * (in + H)`` per layer per step, times 3 with its backward) are added analytically.
Throughput: inference on ``--batch`` agents (one rollout step, no grad, state carried) and training
forward+backward on ``[--train-b, --train-t]`` sequences, both in agent-steps per second on this machine's CPU
with torch's default thread count.

    python benchmarks/policy_flops.py [--config fast|fast_cpu|interface_default] [--batch 256] [--train-b 32]
                                      [--train-t 16] [--seconds 3] [--first-conv tokens|dense]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from metta.agent.agent_config import AGENT_CONFIGS


def time_loop(fn, seconds: float) -> float:
    """Seconds per call: warm up twice, then repeat for about ``seconds``."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def tile(obs: torch.Tensor, n: int) -> torch.Tensor:
    return obs.repeat((n + obs.shape[0] - 1) // obs.shape[0], 1, 1)[:n].contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fast", choices=sorted(AGENT_CONFIGS))
    parser.add_argument("--batch", type=int, default=256, help="agents per inference call")
    parser.add_argument("--train-b", type=int, default=32, help="sequences per training call")
    parser.add_argument("--train-t", type=int, default=16, help="steps per sequence (bptt_horizon)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    parser.add_argument(
        "--first-conv",
        choices=["tokens", "dense"],
        default="tokens",
        help="the first convolution from the tokens (the agent's default) or over the dense box (the components)",
    )
    args = parser.parse_args()

    from metta.agent import PolicyState, make_policy
    from metta.agent.flops import counted_flops, lstm_forward_flops
    from metta.mettagrid.env import MettaGridEnv

    torch.manual_seed(0)
    env = MettaGridEnv("/env/mettagrid/curriculum/navigation/bucketed", num_envs=8, seed=0)
    env_obs, _ = env.reset(0)
    agent = make_policy(env, args.config)
    if args.first_conv == "dense":
        agent.token_conv = None
    params = sum(p.numel() for p in agent.parameters())

    obs = tile(torch.from_numpy(env_obs.copy()), args.batch)
    n_train = args.train_b * args.train_t
    train_obs = tile(torch.from_numpy(env_obs.copy()), n_train).view(args.train_b, args.train_t, *obs.shape[1:])
    train_actions = torch.zeros(args.train_b, args.train_t, 2, dtype=torch.int32)

    def infer() -> None:
        with torch.no_grad():
            agent(obs, state)

    def train_step() -> None:
        _, logprob, entropy, value, _ = agent(train_obs, PolicyState(), train_actions)
        (logprob.mean() + entropy.mean() + value.mean()).backward()

    lstm = lstm_forward_flops(agent)
    state = PolicyState()
    infer()  # rollouts reuse the first convolution's weight table between optimizer steps; count that steady state
    forward = counted_flops(infer) / args.batch + lstm
    agent.zero_grad()
    forward_backward = counted_flops(train_step) / n_train + 3 * lstm

    state = PolicyState()
    infer_s = time_loop(infer, args.seconds)
    train_s = time_loop(train_step, args.seconds)
    print(
        json.dumps(
            {
                "benchmark": "policy_flops",
                "config": args.config,
                "first_conv": "tokens" if agent.token_conv is not None else "dense",
                "params": params,
                "flops_per_agent_step_forward": int(forward),
                "flops_per_agent_step_forward_backward": int(forward_backward),
                "inference_batch": args.batch,
                "inference_agent_steps_per_second": round(args.batch / infer_s, 1),
                "inference_gflops_per_second": round(forward * args.batch / infer_s / 1e9, 3),
                "train_batch": [args.train_b, args.train_t],
                "train_agent_steps_per_second": round(n_train / train_s, 1),
                "train_gflops_per_second": round(forward_backward * n_train / train_s / 1e9, 3),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
