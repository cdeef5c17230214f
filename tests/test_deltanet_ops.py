"""Recurrent-layer ops of _core.Ops (Qwen3.5's Gated DeltaNet, LFM2's short convolution) against
NumPy, on the CPU and on the emulated Metal device under its three thread orders (as
tests/test_moe_ops.py): the causal depthwise convolution carrying its last K - 1 inputs per state row,
with SiLU (Qwen3.5) or without (LFM2) (conv1d_state), the gated delta rule carrying a [k_dim, v_dim]
state per value head (gated_delta_rule), the sigmoid gate of Qwen3.5's attention output
(mul_sigmoid) and the elementwise product of LFM2's gates (mul).

The references are written from transformers' qwen3_5 definitions (causal_conv1d_update,
torch_recurrent_gated_delta_rule with use_qk_l2norm_in_kernel, the layer's
g = A * softplus(a + dt_bias), beta = sigmoid(b)) in float64; test_references_match_transformers
runs transformers' own functions once to prove them. One run table serves the main cases: a fresh
sequence whose state row holds garbage, a one-token decode run, a sequence split into two runs
sharing a state row (its second run earlier in the pass's rows than its first, later in the
table), another sequence continuing from its state, and a state row no run names (left alone).
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import randn, rng_for
from test_moe_ops import ops  # noqa: F401  (the fixture: CPU and Metal under three orders)

N_SLOTS = 4
# (state row, first row, rows, fresh) over a pass of 12 rows
RUNS = np.array([
    [2, 4, 3, 1],   # a new sequence in state row 2, whose garbage must be ignored
    [0, 0, 1, 0],   # one decode token continuing state row 0
    [2, 1, 3, 0],   # state row 2's sequence continued: rows before its first part's, after it in the table
    [3, 7, 5, 0],   # another sequence continuing state row 3
], np.int32)
N_ROWS = 12
UNTOUCHED = 1      # no run names this state row
DECODE = np.array([[1, 0, 1, 0]], np.int32)  # a lone decode step (the common case)


def garbage_state(rng, width: int, runs) -> np.ndarray:
    """States of N_SLOTS rows; a fresh run's row holds NaN and huge values (never to be read)."""
    state = randn(rng, N_SLOTS, width, scale=0.5)
    for slot, _, _, fresh in runs:
        if fresh:
            state[slot, 0::2] = np.nan
            state[slot, 1::2] = 3e38
    return state


def max_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(out)), "non-finite values in output"
    return float(np.max(np.abs(out - ref)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


# ----------------------------------------------------------------------------- references

def conv_reference(x, w, state, runs, silu_out=True):
    """(out, state after): per run in table order, the window [state (zeros when fresh); the run's
    rows], out[t] = silu(sum_j w[:, j] * window[t + j]) (without silu_out the sum itself), the state the window's last K - 1 rows
    ([K - 1][C], oldest first: causal_conv1d_update's conv_state transposed)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    C, K = w.shape
    st = np.asarray(state, np.float64).copy()
    out = np.zeros_like(x)
    for slot, row0, n, fresh in runs:
        past = np.zeros((K - 1, C)) if fresh else st[slot].reshape(K - 1, C)
        h = np.concatenate([past, x[row0:row0 + n]])
        for t in range(n):
            acc = np.einsum("cj,jc->c", w, h[t:t + K])
            out[row0 + t] = silu(acc) if silu_out else acc
        st[slot] = h[len(h) - (K - 1):].reshape(-1)
    return out, st


def delta_reference(q, k, v, alpha, beta, A, dt_bias, state, runs, nk, nv, dk, dv, v_tiled, eps=1e-6):
    """(out, state after) of the gated delta rule, per run in table order and token: for value head h
    with key head kh, q and k L2-normed (q also / sqrt(dk)), S = exp(g) S,
    S += k (sigmoid(beta) (v - S^T k))^T, out = S^T q; S [dk, dv] per head."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    st = np.asarray(state, np.float64).copy().reshape(len(state), nv, dk, dv)
    out = np.zeros((len(q), nv * dv))
    heads = [h % nk if v_tiled else h // (nv // nk) for h in range(nv)]
    for slot, row0, n, fresh in runs:
        if fresh:
            st[slot] = 0.0
        for t in range(row0, row0 + n):
            for h, kh in enumerate(heads):
                qh, kk = q[t, kh * dk:(kh + 1) * dk], k[t, kh * dk:(kh + 1) * dk]
                qh = qh / np.sqrt(qh @ qh + eps) / np.sqrt(dk)
                kk = kk / np.sqrt(kk @ kk + eps)
                g = float(A[h]) * softplus(float(alpha[t, h]) + float(dt_bias[h]))
                b = 1.0 / (1.0 + np.exp(-float(beta[t, h])))
                S = st[slot, h] * np.exp(g)
                S = S + np.outer(kk, b * (v[t, h * dv:(h + 1) * dv] - S.T @ kk))
                out[t, h * dv:(h + 1) * dv] = S.T @ qh
                st[slot, h] = S
    return out, st.reshape(len(state), -1)


def delta_inputs(rng, n, nk, nv, dk, dv, runs):
    """Qwen3.5-like magnitudes: the convolution's SiLU outputs for q, k, v; alpha, beta the raw
    projections; A = -exp(A_log) with A_log's init range log(0.01 .. 16); dt_bias around 1."""
    q, k = silu(randn(rng, n, nk * dk)), silu(randn(rng, n, nk * dk))
    v = silu(randn(rng, n, nv * dv))
    alpha, beta = randn(rng, n, nv), randn(rng, n, nv, scale=2.0)
    A = (-rng.uniform(0.01, 16.0, nv)).astype(np.float32)
    dt_bias = (1.0 + 0.3 * rng.standard_normal(nv)).astype(np.float32)
    state = garbage_state(rng, nv * dk * dv, runs)
    return [a.astype(np.float32) for a in (q, k, v)] + [alpha, beta, A, dt_bias, state]


# ----------------------------------------------------------------------------- transformers

def test_references_match_transformers():
    """The NumPy references against transformers' own causal_conv1d_update and
    torch_recurrent_gated_delta_rule (one sequence: a fresh run, then a continuation from the state
    it left; v_tiled by giving transformers the key heads already spread over the value heads)."""
    torch = pytest.importorskip("torch")
    qwen = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    rng = rng_for("deltanet_hf")
    runs = np.array([[0, 0, 5, 1], [0, 5, 3, 0]], np.int32)
    n, C, K = 8, 12, 4
    x, w = randn(rng, n, C), randn(rng, C, K, scale=0.5)
    ref_out, ref_state = conv_reference(x, w, np.zeros((1, (K - 1) * C), np.float32), runs)
    conv_state = torch.zeros(1, C, K - 1, dtype=torch.float64)  # [batch, C, K - 1], updated in place
    outs = []
    for _, row0, rows, _ in runs:
        xt = torch.from_numpy(x[row0:row0 + rows].astype(np.float64).T[None].copy())
        outs.append(qwen.causal_conv1d_update(xt, conv_state, torch.from_numpy(w.astype(np.float64)), None, "silu"))
    hf_out = torch.cat(outs, dim=-1)[0].T.numpy()
    assert max_err(ref_out, hf_out) < 1e-12  # measured 2.8e-17 (both in float64)
    assert max_err(ref_state[0].reshape(K - 1, C), conv_state[0].T.numpy()) == 0.0

    for nk, nv, dk, dv, v_tiled in [(2, 4, 16, 8, False), (2, 4, 16, 8, True)]:
        q, k, v, alpha, beta, A, dt_bias, _ = delta_inputs(rng, n, nk, nv, dk, dv, runs)
        ref_out, ref_state = delta_reference(q, k, v, alpha, beta, A, dt_bias, np.zeros((1, nv * dk * dv)), runs,
                                             nk, nv, dk, dv, v_tiled)
        heads = [h % nk if v_tiled else h // (nv // nk) for h in range(nv)]
        qh = torch.from_numpy(q.reshape(1, n, nk, dk)[:, :, heads])  # key heads per value head: no regrouping
        kh = torch.from_numpy(k.reshape(1, n, nk, dk)[:, :, heads])
        vh = torch.from_numpy(v.reshape(1, n, nv, dv))
        g = torch.from_numpy(A) * torch.nn.functional.softplus(torch.from_numpy(alpha) + torch.from_numpy(dt_bias))
        b = torch.from_numpy(beta).sigmoid()
        state, outs = None, []
        for _, row0, rows, _ in runs:
            sl = slice(row0, row0 + rows)
            o, state = qwen.torch_recurrent_gated_delta_rule(
                qh[:, sl], kh[:, sl], vh[:, sl], g=g[None, sl], beta=b[None, sl], initial_state=state,
                output_final_state=True, use_qk_l2norm_in_kernel=True)
            outs.append(o)
        hf_out = torch.cat(outs, dim=1).reshape(n, nv * dv).numpy()
        # transformers computes in float32
        assert max_err(ref_out, hf_out) < 5e-8  # measured 1.2e-8, 9.7e-9
        assert max_err(ref_state[0], state.reshape(-1).numpy()) < 4e-7  # measured 5.4e-8, 9.0e-8


# ----------------------------------------------------------------------------- conv1d_state

@pytest.mark.parametrize("C,K,table,silu_out", [
    (24, 4, "runs", True),     # Qwen3.5's width; every kind of run
    (300, 4, "runs", True),    # Metal: two threadgroups of channels, the second partly idle
    (40, 2, "runs", True),     # a one-input window
    (24, 4, "decode", True),   # a lone decode step
    (24, 3, "runs", False),    # LFM2's width (L_cache 3), no activation
    (300, 3, "runs", False),   # Metal: two threadgroups of channels
    (24, 3, "decode", False),  # a lone decode step
])
def test_conv1d_state(ops, C, K, table, silu_out):
    rng = rng_for("conv1d_state", C, K, table) if silu_out else rng_for("conv1d_state", C, K, table, "linear")
    runs = RUNS if table == "runs" else DECODE
    n = N_ROWS if table == "runs" else 1
    x, w = randn(rng, n, C), randn(rng, C, K, scale=0.5)
    state = garbage_state(rng, (K - 1) * C, runs)
    out, new_state = ops.conv1d_state(x, w, state, runs, silu=silu_out)
    ref_out, ref_state = conv_reference(x, w, state, runs, silu_out)
    named = sorted({int(r[0]) for r in runs})
    assert max_err(out, ref_out) < 2e-6        # measured 4.7e-7 with SiLU, 2.5e-7 without (CPU; Metal, every order)
    assert max_err(new_state[named], ref_state[named]) == 0.0  # the inputs themselves
    others = [s for s in range(N_SLOTS) if s not in named]
    np.testing.assert_array_equal(new_state[others], state[others])  # rows no run names: left alone


# ----------------------------------------------------------------------------- gated_delta_rule

@pytest.mark.parametrize("nk,nv,dk,dv,v_tiled,views,table", [
    (2, 4, 16, 8, False, True, "runs"),    # HF's grouped value heads; q, k, v views of one tensor
    (2, 4, 16, 8, True, True, "runs"),     # llama.cpp's tiled value heads
    (2, 4, 16, 8, False, False, "runs"),   # q, k, v each its own tensor
    (1, 2, 32, 40, True, True, "runs"),    # Metal: 64 threads, 2 simdgroups, 24 past v_dim
    (2, 2, 96, 16, False, True, "runs"),   # Metal: the k128 variant, rows past k_dim zero
    (1, 1, 200, 8, False, True, "runs"),   # Metal: the k256 variant
    (2, 4, 16, 8, True, True, "decode"),   # a lone decode step
])
def test_gated_delta_rule(ops, nk, nv, dk, dv, v_tiled, views, table):
    rng = rng_for("delta_rule", nk, nv, dk, dv, v_tiled, views, table)
    runs = RUNS if table == "runs" else DECODE
    n = N_ROWS if table == "runs" else 1
    q, k, v, alpha, beta, A, dt_bias, state = delta_inputs(rng, n, nk, nv, dk, dv, runs)
    out, new_state = ops.gated_delta_rule(q, k, v, alpha, beta, A, dt_bias, state, runs, nk, nv, dk, dv, v_tiled,
                                          1e-6, views=views)
    ref_out, ref_state = delta_reference(q, k, v, alpha, beta, A, dt_bias, state, runs, nk, nv, dk, dv, v_tiled)
    named = sorted({int(r[0]) for r in runs})
    assert max_err(out, ref_out) < 3e-7               # measured 4.8e-8 (CPU), 5.6e-8 (Metal, every order)
    assert max_err(new_state[named], ref_state[named]) < 6e-7  # measured 1.6e-7 (CPU; Metal, every order)
    others = [s for s in range(N_SLOTS) if s not in named]
    np.testing.assert_array_equal(new_state[others], state[others])


def test_gated_delta_rule_eps(ops):
    """eps inside the L2 norms' square roots: a zero key row stays finite and writes nothing."""
    rng = rng_for("delta_rule_eps")
    nk, nv, dk, dv = 1, 2, 16, 8
    q, k, v, alpha, beta, A, dt_bias, state = delta_inputs(rng, 1, nk, nv, dk, dv, DECODE)
    k[:] = 0.0
    out, new_state = ops.gated_delta_rule(q, k, v, alpha, beta, A, dt_bias, state, DECODE, nk, nv, dk, dv, False,
                                          1e-3)
    ref_out, ref_state = delta_reference(q, k, v, alpha, beta, A, dt_bias, state, DECODE, nk, nv, dk, dv, False,
                                         eps=1e-3)
    assert max_err(out, ref_out) < 1e-10            # measured 8.5e-13 (CPU), 1.3e-12 (Metal)
    assert max_err(new_state[1], ref_state[1]) < 1e-10  # measured 5.8e-12 (CPU), 5.2e-12 (Metal)


# ----------------------------------------------------------------------------- mul_sigmoid

def test_mul_sigmoid(ops):
    rng = rng_for("mul_sigmoid")
    x, gate = randn(rng, 5, 72), randn(rng, 5, 72, scale=4.0)
    gate[0, :4] = [-90.0, 90.0, 0.0, -20.0]  # saturated ends
    out = ops.mul_sigmoid(x, gate)  # on the device, x and gate are strided views of one [5, 144] tensor
    ref = x.astype(np.float64) / (1.0 + np.exp(-gate.astype(np.float64)))
    assert max_err(out, ref) < 5e-7   # measured 1.3e-7 (CPU; Metal, every order)


# ----------------------------------------------------------------------------- mul

def test_mul(ops):
    rng = rng_for("mul")
    a, b = randn(rng, 5, 72), randn(rng, 5, 72, scale=4.0)
    a[0, :3] = [0.0, -0.0, 3e38]
    b[0, :3] = [np.inf, 5.0, 0.5]
    out = ops.mul(a, b)  # on the device, a and b are strided views of one [5, 144] tensor
    with np.errstate(invalid="ignore"):
        ref = a * b   # float32: the product rounded once, as the op rounds it
    assert np.isnan(out[0, 0]) and out[0, 1] == 0.0 and out[0, 2] == np.float32(1.5e38)
    out[0, 0] = ref[0, 0] = 0.0
    assert max_err(out, ref) == 0.0


# ----------------------------------------------------------------------------- refusals

def test_conv1d_state_refuses_bad_input(ops):
    rng = rng_for("conv1d_bad")
    C, K = 8, 4
    x, w, state = randn(rng, N_ROWS, C), randn(rng, C, K), randn(rng, N_SLOTS, (K - 1) * C)
    with pytest.raises(ValueError, match="w must be f32"):
        ops.conv1d_state(x, randn(rng, C + 1, K), state, RUNS, silu=True)
    with pytest.raises(ValueError, match="state must be f32"):
        ops.conv1d_state(x, w, randn(rng, N_SLOTS, K * C), RUNS, silu=True)
    with pytest.raises(ValueError, match="outside the pass's 12 rows"):
        ops.conv1d_state(x, w, state, np.array([[0, 10, 3, 1]], np.int32), silu=True)
    with pytest.raises(ValueError, match="state row 4 is outside 0..3"):
        ops.conv1d_state(x, w, state, np.array([[4, 0, 3, 1]], np.int32), silu=True)
    with pytest.raises(ValueError, match="row 2 is in two runs"):
        ops.conv1d_state(x, w, state, np.array([[0, 0, 3, 1], [1, 2, 2, 1]], np.int32), silu=True)
    with pytest.raises(ValueError, match="runs must be i32"):
        ops.conv1d_state(x, w, state, np.zeros((2, 3), np.int32), silu=True)


def test_gated_delta_rule_refuses_bad_input(ops):
    rng = rng_for("delta_rule_bad")
    nk, nv, dk, dv = 2, 4, 16, 8
    q, k, v, alpha, beta, A, dt_bias, state = delta_inputs(rng, N_ROWS, nk, nv, dk, dv, RUNS)

    def call(runs=RUNS, **kw):
        args = dict(q=q, k=k, v=v, alpha=alpha, beta=beta, A=A, dt_bias=dt_bias, state=state, runs=runs,
                    n_k_heads=nk, n_v_heads=nv, k_dim=dk, v_dim=dv, v_tiled=False, eps=1e-6)
        args.update(kw)
        return ops.gated_delta_rule(**args)

    with pytest.raises(ValueError, match="must be a multiple of n_k_heads"):
        call(n_k_heads=3)
    with pytest.raises(ValueError, match="v must be f32"):
        call(v=v[:, :-1].copy())
    with pytest.raises(ValueError, match="state must be f32"):
        call(state=state[:, :-8].copy())
    with pytest.raises(ValueError, match="alpha must be f32"):
        call(alpha=alpha[:, :2].copy())
    with pytest.raises(ValueError, match="k_dim and v_dim must be in 1..256"):
        call(k_dim=300)
    with pytest.raises(ValueError, match="outside the pass's 12 rows"):
        call(runs=np.array([[0, 11, 2, 0]], np.int32))
    with pytest.raises(ValueError, match="state row -1 is outside 0..3"):
        call(runs=np.array([[-1, 0, 2, 0]], np.int32))


def test_mul_sigmoid_refuses_other_shapes(ops):
    rng = rng_for("mul_sigmoid_bad")
    with pytest.raises(ValueError, match="one 2-D shape"):
        ops.mul_sigmoid(randn(rng, 3, 8), randn(rng, 3, 9))
