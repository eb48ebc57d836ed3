"""The pieces of a minibatch update, each in the form metta runs and the form it replaced, as one JSON line.

On one real-shaped minibatch (``--rows`` rows of ``--bptt`` steps, the fast agent's sizes, episode starts
inside rows at navigation's rate of about one per 1,000 steps per agent):

- ``lstm_replay``: the replay of rows cut at their episode starts as one padded LSTM call (``metta.agent.lib.
  lstm``) vs the split replay it replaced (one LSTM call per stretch between steps where some row starts an
  episode), forward and backward;
- ``vtrace``: the closed form of the advantages (``compute_advantage``, the GPU form) vs the loop over time it
  replaced;
- ``adam``: fused Adam (one kernel) vs the multi-tensor step, on the fast agent's parameters;
- ``first_conv``: the agent's first convolution from the tokens (``metta.agent.lib.token_conv``), forward and
  backward, on ``rows * bptt`` navigation observations (agents taking random actions): the sparse patch product (a
  CPU's form; CPU only), the dense components (a GPU's) and the bag form.

For each: ``host_ms``, the time the host spends issuing the work, and ``device_ms``, the time until the device
finished it (CUDA events; on a CPU the two are the same work and ``device_ms`` is the wall time).

    python benchmarks/learn_micro.py [--device cuda] [--rows 256] [--bptt 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def split_replay(layer, x, h, c, starts: torch.Tensor, batch: int, horizon: int) -> torch.Tensor:
    """The replay metta ran before the padded batch: zero the states where an episode starts, and call nn.LSTM
    once per stretch between steps where some row starts one (the cuts read back from the host)."""
    keep0 = (~starts[:, 0]).to(x.dtype).view(1, batch, 1)
    h, c = h * keep0, c * keep0
    xs = x.view(batch, horizon, -1).transpose(0, 1)
    cuts = [0, *(starts[:, 1:].any(0).nonzero().flatten() + 1).tolist(), horizon]
    pieces = []
    for begin, end in zip(cuts[:-1], cuts[1:]):
        if begin > 0:
            keep = (~starts[:, begin]).to(x.dtype).view(1, batch, 1)
            h, c = h * keep, c * keep
        piece, (h, c) = layer.lstm(xs[begin:end], (h, c))
        pieces.append(piece)
    return torch.cat(pieces).transpose(0, 1).reshape(batch * horizon, -1)


def vtrace_loop(values, rewards, dones, ratio, gamma, lam, rho_clip, c_clip) -> torch.Tensor:
    """The advantages as metta computed them on a GPU before the closed form: a loop over time."""
    next_v = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    next_r = torch.cat([rewards[:, 1:], torch.zeros_like(rewards[:, :1])], dim=1)
    nonterminal = 1.0 - torch.cat([dones[:, 1:], torch.zeros_like(dones[:, :1])], dim=1)
    delta = ratio.clamp(max=rho_clip) * (next_r + gamma * next_v * nonterminal - values)
    decay = gamma * lam * ratio.clamp(max=c_clip) * nonterminal
    delta[:, -1] = 0
    decay[:, -1] = 0
    out = torch.empty_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 1, -1, -1):
        last = delta[:, t] + decay[:, t] * last
        out[:, t] = last
    return out


def _navigation_tokens(count: int, seed: int) -> torch.Tensor:
    """``count`` token observations of the navigation curriculum, from 64 envs of agents taking random actions
    (from the 51st step on, so they have left their start)."""
    from metta.mettagrid.env import MettaGridEnv

    env = MettaGridEnv("/env/mettagrid/curriculum/navigation/bucketed", num_envs=64)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    batches, have = [], 0
    for step in range(10_000):
        actions = np.stack([rng.integers(0, 2, env.num_agents), rng.integers(0, 4, env.num_agents)], axis=1)
        obs, *_ = env.step(actions.astype(np.int32))
        if step >= 50:
            batches.append(torch.from_numpy(obs.copy()))
            have += len(obs)
            if have >= count:
                break
    env.close()
    return torch.cat(batches)[:count]


def timed(fn, device: torch.device, repeats: int) -> dict[str, float]:
    for _ in range(3):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    host = time.perf_counter() - began
    if cuda:
        end.record()
        torch.cuda.synchronize(device)
        device_ms = start.elapsed_time(end) / repeats
    else:
        device_ms = host * 1000 / repeats
    return {"host_ms": round(host * 1000 / repeats, 3), "device_ms": round(device_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from metta.agent.metta_agent import make_policy
    from metta.common.code_paths import gpu_forms_everywhere
    from metta.mettagrid.env import MettaGridEnv
    from metta.rl.advantage import compute_advantage

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    rows, horizon = args.rows, args.bptt
    policy = make_policy(MettaGridEnv("/env/mettagrid/curriculum/navigation/bucketed", num_envs=1), device=device)
    layer = policy.components["_core_"]
    features = layer.lstm.input_size

    # Episode starts at navigation's rate (about 1 per 1,000 agent steps), at least a few per minibatch.
    starts = np.zeros((rows, horizon), dtype=bool)
    for _ in range(max(4, rows * horizon // 1000)):
        starts[rng.integers(rows), rng.integers(1, horizon)] = True
    host_starts = torch.from_numpy(starts)
    device_starts = host_starts.to(device)
    x = torch.randn(rows * horizon, features, device=device, requires_grad=True)
    h0 = torch.randn(layer.num_layers, rows, layer.hidden_size, device=device)
    c0 = torch.randn_like(h0)

    def padded():
        td = {layer.sources[0]: x, "_B_": rows, "_T_": horizon, "lstm_h": h0, "lstm_c": c0}
        td["episode_starts"] = host_starts
        layer(td)
        td[layer.name].sum().backward()

    def split():
        split_replay(layer, x, h0, c0, device_starts, rows, horizon).sum().backward()

    values, rewards = (torch.randn(rows, horizon, device=device) for _ in range(2))
    dones = torch.from_numpy(starts.astype(np.float32)).to(device)
    ratio = torch.exp(0.1 * torch.randn(rows, horizon, device=device))
    out = torch.empty(rows, horizon, device=device)

    def closed_form():
        with gpu_forms_everywhere():
            compute_advantage(values, rewards, dones, ratio, out, 0.977, 0.916, 1.0, 1.0)

    def loop():
        vtrace_loop(values, rewards, dones, ratio, 0.977, 0.916, 1.0, 1.0)

    observations = _navigation_tokens(rows * horizon, args.seed).to(device)
    first_conv = policy.token_conv

    def first_conv_pass(product: str):
        def run():
            first_conv.product = product
            td = {"x": observations}
            first_conv(td)
            td[first_conv.name].sum().backward()

        return run

    conv_forms = ["sparse", "dense", "bag"] if device.type == "cpu" else ["dense", "bag"]
    first_conv_times = {form: timed(first_conv_pass(form), device, args.repeats) for form in conv_forms}
    first_conv.product = None

    params = [p for p in policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {
        "fused": torch.optim.Adam(params, lr=1e-7, fused=True),
        "multi_tensor": torch.optim.Adam(params, lr=1e-7, foreach=True),
    }
    result = {
        "benchmark": "learn_micro",
        "lstm_replay": {"padded": timed(padded, device, args.repeats), "split": timed(split, device, args.repeats)},
        "vtrace": {"closed_form": timed(closed_form, device, args.repeats), "loop": timed(loop, device, args.repeats)},
        "adam": {name: timed(opt.step, device, args.repeats) for name, opt in optimizers.items()},
        "first_conv": first_conv_times,
        "config": {
            "device": str(device),
            "rows": rows,
            "bptt": horizon,
            "episode_starts_inside": int(starts[:, 1:].sum()),
            "split_pieces": int(starts[:, 1:].any(0).sum()) + 1,
            "lstm": f"{layer.num_layers}x{layer.hidden_size}",
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
