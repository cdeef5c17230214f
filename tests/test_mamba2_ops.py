"""Mamba2's ops of _core.Ops (Granite 4.0-H, Nemotron-H) against NumPy, on the CPU and on the emulated
Metal device under its three thread orders (as tests/test_deltanet_ops.py): the selective state scan
carrying a [head_dim, d_state] state per head (mamba2_scan), and the causal convolution with its
bias before the SiLU (conv1d_state's bias).

The scan's reference is the recurrence one token at a time, in float64;
test_scan_reference_matches_transformers proves it against transformers' own chunked segment-sum
path (mamba2_chunk_scan, the torch_forward of prefill) and its single-step update
(mamba2_selective_state_update, decode), a sequence resumed from the state it left. The run
tables are test_deltanet_ops.py's: a fresh sequence over a garbage state row, a decode run, a
sequence split into two runs of one state row, a continuation, and a state row no run names.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import randn, rng_for
from test_deltanet_ops import (DECODE, N_ROWS, N_SLOTS, RUNS, conv_reference, garbage_state, max_err, silu,
                               softplus)
from test_moe_ops import ops  # noqa: F401  (the fixture: CPU and Metal under three orders)


def scan_reference(x, B, C, dt, A, D, dt_bias, state, runs, nh, hd, ng, ds):
    """(out, state after): per run in table order and token, for head h of group g = h / (nh / ng),
    d = softplus(dt + dt_bias), S = exp(d A) S + d x B^T, y = S C + D x; S [hd, ds] per head."""
    x, B, C, dt = (np.asarray(a, np.float64) for a in (x, B, C, dt))
    st = np.asarray(state, np.float64).copy().reshape(len(state), nh, hd, ds)
    out = np.zeros((len(x), nh * hd))
    for slot, row0, n, fresh in runs:
        if fresh:
            st[slot] = 0.0
        for t in range(row0, row0 + n):
            for h in range(nh):
                g = h // (nh // ng)
                xh, b, c = x[t, h * hd:(h + 1) * hd], B[t, g * ds:(g + 1) * ds], C[t, g * ds:(g + 1) * ds]
                d = float(softplus(float(dt[t, h]) + float(dt_bias[h])))
                S = st[slot, h] * np.exp(d * float(A[h])) + d * np.outer(xh, b)
                out[t, h * hd:(h + 1) * hd] = S @ c + float(D[h]) * xh
                st[slot, h] = S
    return out, st.reshape(len(state), -1)


def scan_inputs(rng, n, nh, hd, ng, ds, runs):
    """Granite 4.0-H-like magnitudes: x, B, C the convolution's SiLU outputs; dt the raw projection;
    A = -exp(A_log) with A_log = log(1 .. n_heads) (transformers' init); D around 1; dt_bias
    around 1."""
    x, B, C = silu(randn(rng, n, nh * hd)), silu(randn(rng, n, ng * ds)), silu(randn(rng, n, ng * ds))
    dt = randn(rng, n, nh)
    A = (-rng.uniform(1.0, 16.0, nh)).astype(np.float32)
    D = (1.0 + 0.3 * rng.standard_normal(nh)).astype(np.float32)
    dt_bias = (1.0 + 0.3 * rng.standard_normal(nh)).astype(np.float32)
    state = garbage_state(rng, nh * hd * ds, runs)
    return [a.astype(np.float32) for a in (x, B, C)] + [dt, A, D, dt_bias, state]


# ----------------------------------------------------------------------------- transformers

def test_scan_reference_matches_transformers():
    """The reference against transformers' granitemoehybrid mamba2_chunk_scan (a prompt of 7 tokens
    in chunks of 4, so the inter-chunk recurrence runs too; then 3 more from its final state) and
    mamba2_selective_state_update (one decode token from there)."""
    torch = pytest.importorskip("torch")
    gm = pytest.importorskip("transformers.models.granitemoehybrid.modeling_granitemoehybrid")
    rng = rng_for("mamba2_hf")
    nh, hd, ng, ds = 4, 6, 2, 8
    runs = np.array([[0, 0, 7, 1], [0, 7, 3, 0], [0, 10, 1, 0]], np.int32)
    n = 11
    x, B, C, dt, A, D, dt_bias, _ = scan_inputs(rng, n, nh, hd, ng, ds, runs)
    ref_out, ref_state = scan_reference(x, B, C, dt, A, D, dt_bias, np.zeros((1, nh * hd * ds)), runs, nh, hd, ng, ds)
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in dict(x=x, B=B, C=C, dt=dt, A=A, D=D, b=dt_bias).items()}
    state, outs = None, []
    for _, row0, rows, _ in runs[:2]:
        sl = slice(row0, row0 + rows)
        o, state = gm.mamba2_chunk_scan(
            t["x"][sl].reshape(1, rows, nh, hd), t["dt"][None, sl], t["A"], t["B"][sl].reshape(1, rows, ng, ds),
            t["C"][sl].reshape(1, rows, ng, ds), chunk_size=4, D=t["D"], dt_bias=t["b"], initial_states=state,
            dt_softplus=True, return_final_states=True)
        outs.append(o.reshape(rows, nh * hd))
    state = state.clone()  # [1, nh, hd, ds], updated in place by the decode step
    # the decode step's per-element shapes, as GraniteMoeHybridMambaLayer expands them
    o = gm.mamba2_selective_state_update(
        state, t["x"][10].reshape(1, nh, hd), t["dt"][10][None, :, None].expand(1, nh, hd),
        t["A"][:, None, None].expand(nh, hd, ds), t["B"][10].reshape(1, ng, ds), t["C"][10].reshape(1, ng, ds),
        t["D"][:, None].expand(nh, hd), dt_bias=t["b"][:, None].expand(nh, hd), dt_softplus=True)
    outs.append(o.reshape(1, nh * hd))
    hf_out = torch.cat(outs).numpy()
    # transformers' chunk path computes hidden_states, B, C in float32 (.float())
    assert max_err(ref_out, hf_out) < 4e-6    # measured 8.1e-7
    assert max_err(ref_state[0], state.reshape(-1).numpy()) < 1e-6  # measured 9.7e-8


# ----------------------------------------------------------------------------- mamba2_scan

@pytest.mark.parametrize("nh,hd,ng,ds,views,table", [
    (4, 8, 1, 16, True, "runs"),     # one group (Granite 4.0-H); x, B, C views of one tensor
    (4, 8, 2, 16, True, "runs"),     # two groups (Nemotron-H has 8)
    (4, 8, 2, 16, False, "runs"),    # x, B, C each its own tensor
    (2, 100, 1, 16, True, "runs"),   # Metal: two threadgroups of state rows, the second partly idle
    (2, 8, 1, 96, True, "runs"),     # Metal: the n128 variant, columns past d_state zero
    (1, 4, 1, 200, True, "runs"),    # Metal: the n256 variant
    (4, 8, 2, 16, True, "decode"),   # a lone decode step
])
def test_mamba2_scan(ops, nh, hd, ng, ds, views, table):
    rng = rng_for("mamba2_scan", nh, hd, ng, ds, views, table)
    runs = RUNS if table == "runs" else DECODE
    n = N_ROWS if table == "runs" else 1
    x, B, C, dt, A, D, dt_bias, state = scan_inputs(rng, n, nh, hd, ng, ds, runs)
    out, new_state = ops.mamba2_scan(x, B, C, dt, A, D, dt_bias, state, runs, nh, hd, ng, ds, views=views)
    ref_out, ref_state = scan_reference(x, B, C, dt, A, D, dt_bias, state, runs, nh, hd, ng, ds)
    named = sorted({int(r[0]) for r in runs})
    # relative to the largest magnitude (sums of d_state products)
    err, state_err = max_err(out, ref_out) / np.abs(ref_out).max(), max_err(new_state[named], ref_state[named]) / \
        np.abs(ref_state[named]).max()
    assert err < 1e-6        # measured <= 2.2e-7 (CPU; Metal, every order)
    assert state_err < 1e-6  # measured <= 9.6e-8
    others = [s for s in range(N_SLOTS) if s not in named]
    np.testing.assert_array_equal(new_state[others], state[others])


def test_mamba2_scan_saturated_step(ops):
    """dt + dt_bias past softplus's threshold (20) is taken as it is, and exp(d A) underflows to 0:
    the state forgets its past and holds d x B^T alone."""
    rng = rng_for("mamba2_scan_big_dt")
    nh, hd, ng, ds = 2, 4, 1, 8
    x, B, C, dt, A, D, dt_bias, state = scan_inputs(rng, 1, nh, hd, ng, ds, DECODE)
    dt[:] = [[30.0, -40.0]]
    out, new_state = ops.mamba2_scan(x, B, C, dt, A, D, dt_bias, state, DECODE, nh, hd, ng, ds)
    ref_out, ref_state = scan_reference(x, B, C, dt, A, D, dt_bias, state, DECODE, nh, hd, ng, ds)
    assert max_err(out, ref_out) < 1e-5              # measured 1.4e-6 (values near 30)
    assert max_err(new_state[1], ref_state[1]) < 1e-5  # measured 2.2e-6


# ----------------------------------------------------------------------------- conv1d_state's bias

@pytest.mark.parametrize("C,K,table", [(40, 4, "runs"), (300, 4, "runs"), (40, 4, "decode")])
def test_conv1d_state_bias(ops, C, K, table):
    """Mamba2's convolution: SiLU of the sum plus conv1d.bias (transformers' causal_conv1d_fn)."""
    rng = rng_for("conv1d_bias", C, K, table)
    runs = RUNS if table == "runs" else DECODE
    n = N_ROWS if table == "runs" else 1
    x, w, bias = randn(rng, n, C), randn(rng, C, K, scale=0.5), randn(rng, C)
    state = garbage_state(rng, (K - 1) * C, runs)
    out, new_state = ops.conv1d_state(x, w, state, runs, silu=True, bias=bias)
    pre, ref_state = conv_reference(x, w, state, runs, silu_out=False)
    named = sorted({int(r[0]) for r in runs})
    assert max_err(out, silu(pre + bias.astype(np.float64))) < 2e-6    # measured 8.1e-7 (CPU; Metal, every order)
    assert max_err(new_state[named], ref_state[named]) == 0.0


def test_conv1d_bias_reference_matches_transformers():
    torch = pytest.importorskip("torch")
    gm = pytest.importorskip("transformers.models.granitemoehybrid.modeling_granitemoehybrid")
    rng = rng_for("conv1d_bias_hf")
    n, C, K = 6, 10, 4
    x, w, bias = randn(rng, n, C), randn(rng, C, K, scale=0.5), randn(rng, C)
    pre, _ = conv_reference(x, w, np.zeros((1, (K - 1) * C), np.float32), np.array([[0, 0, n, 1]], np.int32), False)
    hf = gm.causal_conv1d_fn(torch.from_numpy(x.astype(np.float64).T[None].copy()), torch.from_numpy(
        w.astype(np.float64)), torch.from_numpy(bias.astype(np.float64)), activation="silu")[0].T.numpy()
    assert max_err(silu(pre + bias.astype(np.float64)), hf) < 1e-12


# ----------------------------------------------------------------------------- refusals

def test_mamba2_scan_refuses_bad_input(ops):
    rng = rng_for("mamba2_scan_bad")
    nh, hd, ng, ds = 4, 8, 2, 16
    x, B, C, dt, A, D, dt_bias, state = scan_inputs(rng, N_ROWS, nh, hd, ng, ds, RUNS)

    def call(runs=RUNS, **kw):
        args = dict(x=x, B=B, C=C, dt=dt, A=A, D=D, dt_bias=dt_bias, state=state, runs=runs, n_heads=nh,
                    head_dim=hd, n_groups=ng, d_state=ds, views=False)
        args.update(kw)
        return ops.mamba2_scan(**args)

    with pytest.raises(ValueError, match="must be a multiple of n_groups"):
        call(n_groups=3)
    with pytest.raises(ValueError, match="d_state in 1..256"):
        call(d_state=300)
    with pytest.raises(ValueError, match="B must be f32"):
        call(B=B[:, :-1].copy())
    with pytest.raises(ValueError, match="dt must be f32"):
        call(dt=dt[:, :2].copy())
    with pytest.raises(ValueError, match="D must be f32"):
        call(D=D[:2].copy())
    with pytest.raises(ValueError, match="state must be f32"):
        call(state=state[:, :-8].copy())
    with pytest.raises(ValueError, match="outside the pass's 12 rows"):
        call(runs=np.array([[0, 11, 2, 0]], np.int32))


def test_conv1d_state_refuses_a_bias_of_another_width(ops):
    rng = rng_for("conv1d_bias_bad")
    C, K = 8, 4
    x, w, state = randn(rng, N_ROWS, C), randn(rng, C, K), randn(rng, N_SLOTS, (K - 1) * C)
    with pytest.raises(ValueError, match="bias must be f32"):
        ops.conv1d_state(x, w, state, RUNS, silu=True, bias=randn(rng, 1, C + 1)[0])
