"""compute_advantage against a plain NumPy loop of upstream-facts 4.1, on both implementations: the CPU's
compiled kernel and the GPU's closed form (run here on the CPU through ``gpu_forms_everywhere``)."""

import contextlib

import numpy as np
import pytest
import torch

from metta.common.code_paths import gpu_forms_everywhere
from metta.common.profiling.dispatch_counter import DispatchCounter
from metta.rl.advantage import RowTail, compute_advantage, normalize_advantage_distributed


def implementation(impl: str):
    """Where compute_advantage runs the kernel ("numba", a CPU's) or the closed form ("torch", a GPU's)."""
    return gpu_forms_everywhere() if impl == "torch" else contextlib.nullcontext()


def reference_advantage(values, rewards, dones, ratio, gamma, lam, rho_clip, c_clip, truncations=None):
    """Upstream-facts 4.1 step by step; at a truncation the step before it bootstraps from its own value."""
    S, H = values.shape
    truncations = np.zeros_like(dones) if truncations is None else truncations
    adv = np.zeros((S, H), dtype=np.float64)
    for s in range(S):
        last = 0.0
        for t in range(H - 2, -1, -1):
            nextnonterminal = 1.0 - dones[s, t + 1]
            bootstrap = values[s, t] if truncations[s, t + 1] else values[s, t + 1] * nextnonterminal
            rho_t = min(ratio[s, t], rho_clip)
            c_t = min(ratio[s, t], c_clip)
            delta = rho_t * (rewards[s, t + 1] + gamma * bootstrap - values[s, t])
            last = delta + gamma * lam * c_t * last * nextnonterminal
            adv[s, t] = last
    return adv


def random_batch(seed, S=37, H=16, ratio_spread=0.5):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(S, H)).astype(np.float32)
    rewards = rng.normal(size=(S, H)).astype(np.float32)
    dones = (rng.random((S, H)) < 0.1).astype(np.float32)
    ratio = np.exp(rng.normal(scale=ratio_spread, size=(S, H))).astype(np.float32)
    return values, rewards, dones, ratio


def random_truncations(dones, seed):
    """Half of the episode ends, at random, are truncations (a subset of ``dones``, as Experience stores them)."""
    return (dones * (np.random.default_rng(seed).random(dones.shape) < 0.5)).astype(dones.dtype)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize(
    "gamma,lam,rho_clip,c_clip,ratio_one,truncated",
    [
        (0.99, 0.95, 1.0, 1.0, True, False),  # plain GAE, every done a terminal
        (0.99, 0.95, 1.0, 1.0, True, True),  # plain GAE with truncations
        (0.977, 0.916, 1.0, 1.0, False, True),  # upstream defaults with off-policy ratios
        (0.9, 0.8, 0.5, 2.0, False, True),
        (0.99, 1.0, 10.0, 0.3, False, False),
    ],
)
def test_matches_numpy_loop(impl, gamma, lam, rho_clip, c_clip, ratio_one, truncated):
    values, rewards, dones, ratio = random_batch(seed=int(gamma * 1000 + lam * 100))
    if ratio_one:
        ratio = np.ones_like(ratio)
    truncations = random_truncations(dones, seed=2) if truncated else None
    expected = reference_advantage(values, rewards, dones, ratio, gamma, lam, rho_clip, c_clip, truncations)
    args = [torch.from_numpy(x.copy()) for x in (values, rewards, dones, ratio)]
    out = torch.full(values.shape, 123.0)
    with implementation(impl):
        result = compute_advantage(
            *args,
            out,
            gamma,
            lam,
            rho_clip,
            c_clip,
            "cpu",
            truncations=None if truncations is None else torch.from_numpy(truncations),
        )
    assert result is out
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (out[:, -1] == 0).all()


def random_chains(rng, segments, agents):
    """next_rows as Experience builds them: agents take rows 0..agents-1, then the free rows in turn."""
    next_rows = np.full(segments, -1, dtype=np.int64)
    current = list(range(agents))
    free = agents
    while free < segments:
        for a in rng.permutation(agents):
            if free == segments:
                break
            next_rows[current[a]] = free
            current[a], free = free, free + 1
    return next_rows


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_next_rows_equals_one_long_row_per_agent(impl):
    """Chained rows give exactly the advantages of each agent's steps laid end to end as one row."""
    S, H, agents = 23, 8, 5
    rng = np.random.default_rng(7)
    values, rewards, dones, ratio = random_batch(seed=11, S=S, H=H)
    dones[::2, 0] = 1.0  # episode ends at rows' first steps too, where the step before is the previous row's last
    truncations = random_truncations(dones, seed=4)
    next_rows = random_chains(rng, S, agents)
    gamma, lam, rho_clip, c_clip = 0.95, 0.9, 1.0, 1.0
    expected = np.zeros((S, H))
    for first in range(agents):
        chain = [first]
        while next_rows[chain[-1]] >= 0:
            chain.append(int(next_rows[chain[-1]]))
        joined = [np.concatenate([x[r] for r in chain])[None] for x in (values, rewards, dones, ratio, truncations)]
        long_row = reference_advantage(*joined[:4], gamma, lam, rho_clip, c_clip, joined[4])[0]
        for i, r in enumerate(chain):
            expected[r] = long_row[i * H : (i + 1) * H]
    args = [torch.from_numpy(x.copy()) for x in (values, rewards, dones, ratio)]
    out = torch.zeros(S, H)
    with implementation(impl):
        compute_advantage(
            *args,
            out,
            gamma,
            lam,
            rho_clip,
            c_clip,
            "cpu",
            next_rows=torch.from_numpy(next_rows),
            truncations=torch.from_numpy(truncations),
        )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # Only the last row of each agent's chain ends with 0; a reward at a row's first step now counts.
    assert (out[torch.from_numpy(next_rows >= 0), -1] != 0).all()


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_tail_recomputes_a_minibatch_as_the_whole_buffer_did(impl):
    """A minibatch's rows with their tails (V-trace clipped ratios included) reproduce the chained buffer."""
    S, H = 20, 6
    values, rewards, dones, ratio = random_batch(seed=3, S=S, H=H)
    dones[:, 0] = 1.0  # every row starts an episode: its predecessor's tail ends one, half of them truncated
    truncations = torch.from_numpy(random_truncations(dones, seed=5))
    next_rows = torch.from_numpy(random_chains(np.random.default_rng(1), S, 4))
    args = [torch.from_numpy(x.copy()) for x in (values, rewards, dones, ratio)]
    full = compute_advantage(*args, torch.zeros(S, H), 0.9, 0.8, 0.7, 1.3, next_rows=next_rows, truncations=truncations)
    idx = torch.tensor([2, 9, 15, 0, 19])
    nxt = next_rows[idx]
    following = nxt.clamp(min=0)
    tail = RowTail(
        args[1][following, 0],
        args[0][following, 0],
        args[2][following, 0],
        full[following, 0],
        nxt >= 0,
        truncations[following, 0],
    )
    part = [a[idx] for a in args]
    out = torch.zeros(len(idx), H)
    with implementation(impl):
        compute_advantage(*part, out, 0.9, 0.8, 0.7, 1.3, tail=tail, truncations=truncations[idx])
    np.testing.assert_allclose(out.numpy(), full[idx].numpy(), rtol=1e-5, atol=1e-6)


def loop_with_tail(values, rewards, dones, truncations, ratio, gamma, lam, rho_clip, c_clip, tail):
    """The recursion step by step in float64, each row's last step reading ``tail`` (rewards, values, dones,
    advantages, valid, truncations) as its t + 1."""
    S, H = values.shape
    adv = np.zeros((S, H), dtype=np.float64)
    for s in range(S):
        for t in range(H - 1, -1, -1):
            if t == H - 1:
                if not tail[4][s]:
                    continue
                r, v, d, u, last = tail[0][s], tail[1][s], tail[2][s], tail[5][s], tail[3][s]
            else:
                r, v, d, u = rewards[s, t + 1], values[s, t + 1], dones[s, t + 1], truncations[s, t + 1]
                last = adv[s, t + 1]
            bootstrap = values[s, t] if u else v * (1 - d)
            delta = min(ratio[s, t], rho_clip) * (r + gamma * bootstrap - values[s, t])
            adv[s, t] = delta + gamma * lam * min(ratio[s, t], c_clip) * last * (1 - d)
    return adv


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize(
    "gamma,lam,rho_clip,c_clip,H",
    [
        (0.977, 0.916, 1.0, 1.0, 16),
        (0.9, 0.8, 0.5, 0.7, 16),  # clipped rho and c
        (0.0, 0.9, 1.0, 1.0, 8),  # gamma 0: one-step TD errors
        (1.0, 1.0, 1.0, 1.0, 8),  # gamma and lambda 1: undiscounted returns
        (0.99, 0.0, 1.0, 1.0, 8),  # lambda 0
        (0.95, 0.9, 1.2, 0.9, 1),  # rows of one step
    ],
)
def test_the_closed_form_equals_the_loop(dtype, tolerance, gamma, lam, rho_clip, c_clip, H):
    """The GPU's closed form against the step-by-step loop, with episode ends, clipped ratios, tails (valid and
    not) and the edge values of gamma and lambda: within 1e-5 in float32 and 1e-10 in float64."""
    S = 29
    values, rewards, dones, ratio = (x.astype(np.float64) for x in random_batch(seed=H, S=S, H=H, ratio_spread=0.8))
    dones[::3, H // 2] = 1.0  # episode ends in every third row at least
    truncations = random_truncations(dones, seed=H)
    rng = np.random.default_rng(5)
    tail_dones = (rng.random(S) < 0.4) * 1.0
    tail = (
        rng.normal(size=S),
        rng.normal(size=S),
        tail_dones,
        rng.normal(size=S),
        rng.random(S) < 0.7,
        tail_dones * (rng.random(S) < 0.5),
    )
    expected = loop_with_tail(values, rewards, dones, truncations, ratio, gamma, lam, rho_clip, c_clip, tail)
    args = [torch.from_numpy(x).to(dtype) for x in (values, rewards, dones, ratio)]
    tail_t = RowTail(
        *(torch.from_numpy(np.asarray(x)).to(dtype) for x in tail[:4]),
        torch.from_numpy(tail[4]),
        torch.from_numpy(tail[5]).to(dtype),
    )
    truncations_t = torch.from_numpy(truncations).to(dtype)
    out = torch.zeros(S, H, dtype=dtype)
    with gpu_forms_everywhere():
        compute_advantage(*args, out, gamma, lam, rho_clip, c_clip, tail=tail_t, truncations=truncations_t)
    if dtype == torch.float32:  # the loop on the same float32 inputs
        as_float64 = [a.double().numpy() for a in args]
        expected = loop_with_tail(*as_float64[:3], truncations, as_float64[3], gamma, lam, rho_clip, c_clip, tail)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=tolerance, atol=tolerance)


def test_the_closed_form_is_a_few_ops_without_host_reads():
    """No loop over time: the op count does not grow with the horizon, and nothing is read back."""
    counts = []
    for H in (8, 64):
        args = [torch.from_numpy(x) for x in random_batch(seed=1, S=16, H=H)]
        truncations = torch.from_numpy(random_truncations(args[2].numpy(), seed=1))
        counter = DispatchCounter()
        with gpu_forms_everywhere():
            compute_advantage(*args, torch.zeros(16, H), 0.97, 0.9, 1.0, 1.0)  # the first call builds masks
            with counter:
                compute_advantage(*args, torch.zeros(16, H), 0.97, 0.9, 1.0, 1.0)
            with DispatchCounter() as truncated:
                compute_advantage(*args, torch.zeros(16, H), 0.97, 0.9, 1.0, 1.0, truncations=truncations)
        counts.append(counter.totals())
        # Truncations cost two ops: the end of an episode as max(done, truncated), and the bootstrap term.
        assert truncated.totals()["ops"] == counts[-1]["ops"] + 2 and truncated.totals()["host_syncs"] == 0
    assert counts[0] == counts[1] and counts[0]["host_syncs"] == 0 and counts[0]["ops"] < 40


def test_bad_next_rows_are_named():
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"next_rows\[2\]=1: a row continues into a later row"):
        compute_advantage(z, z, z, z + 1, z.clone(), 0.9, 0.9, 1.0, 1.0, next_rows=torch.tensor([1, 3, 1, -1]))
    with pytest.raises(ValueError, match=r"next_rows has shape \[3\]"):
        compute_advantage(z, z, z, z + 1, z.clone(), 0.9, 0.9, 1.0, 1.0, next_rows=torch.tensor([1, 2, -1]))


def test_plain_gae_without_dones_by_hand():
    # One row, H=3, gamma=0.5, lambda=1: A1 = r2 + 0.5 V2 - V1; A0 = r1 + 0.5 V1 - V0 + 0.5 A1.
    v = torch.tensor([[1.0, 2.0, 4.0]])
    r = torch.tensor([[0.0, 1.0, 3.0]])
    adv = compute_advantage(
        v, r, torch.zeros_like(v), torch.ones_like(v), torch.zeros_like(v), 0.5, 1.0, 1.0, 1.0, "cpu"
    )
    a1 = 3 + 0.5 * 4 - 2
    a0 = 1 + 0.5 * 2 - 1 + 0.5 * a1
    assert adv.tolist() == [[pytest.approx(a0), pytest.approx(a1), 0.0]]


def test_done_cuts_bootstrap():
    v = torch.tensor([[1.0, 2.0, 4.0]])
    r = torch.tensor([[0.0, 1.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])  # the obs at t=2 starts a new episode
    adv = compute_advantage(v, r, d, torch.ones_like(v), torch.zeros_like(v), 0.5, 1.0, 1.0, 1.0, "cpu")
    a1 = 3 - 2  # no value bootstrap, no recursion into t=2
    a0 = 1 + 0.5 * 2 - 1 + 0.5 * a1
    assert adv.tolist() == [[pytest.approx(a0), pytest.approx(a1), 0.0]]


def test_non_contiguous_output_and_grad_ratio():
    values, rewards, dones, ratio = random_batch(3, S=8, H=6)
    expected = reference_advantage(values, rewards, dones, ratio, 0.9, 0.9, 1.0, 1.0)
    ratio_t = torch.from_numpy(ratio).requires_grad_(True)
    out = torch.zeros(6, 8).t()  # a transposed, non-contiguous view
    compute_advantage(
        torch.from_numpy(values),
        torch.from_numpy(rewards),
        torch.from_numpy(dones),
        ratio_t,
        out,
        0.9,
        0.9,
        1.0,
        1.0,
        "cpu",
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_shape_mismatch_is_named():
    v = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="rewards has shape"):
        compute_advantage(v, torch.zeros(4, 7), v, v, v.clone(), 0.9, 0.9, 1, 1, "cpu")


def test_normalize():
    adv = torch.tensor([1.0, 2.0, 3.0, 6.0])
    out = normalize_advantage_distributed(adv, True)
    assert out.mean().abs() < 1e-6 and out.std().item() == pytest.approx(1.0, rel=1e-5)
    assert normalize_advantage_distributed(adv, False) is adv
