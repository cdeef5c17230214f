"""Mixture-of-experts ops of _core.Ops against NumPy: the router's top-k (moe_route), the matmul
over each token's selected experts (matmul_id: GEMVs in decode, one GEMM per used expert over
the gathered rows in prefill) and the weighted sum of the experts' outputs (moe_sum_add), with
skewed routings (one expert takes every token; experts that take none).

Weights go through the same kernels as matmul, so matmul_id's bound is test_cpu_ops'
matmul_bound of the decode path (the larger of the two paths a group of rows can take).
Metal runs on the emulated device under its three thread orders (as tests/test_metal_ops.py).
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from test_cpu_ops import (BF16, DTYPE_NAMES, F16, F32, Q4_0, Q4_K, Q6_K, Q8_0, decode_weights, encode_weights,
                          matmul_bound, nmse, randn, rng_for)
from test_metal_ops import OPS_BACKENDS, ops_in_order

MXFP4 = 39
MOE_DTYPES = [F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, MXFP4]


@pytest.fixture(params=OPS_BACKENDS)
def ops(request, core):
    """An Ops of the CPU, or of the (emulated) Metal device running threads in one order."""
    yield from ops_in_order(core, request.param)


def backend_of(ops) -> str:
    return "metal" if ops.name == "metal" else "cpu"


def encode(w: np.ndarray, dtype_id: int) -> np.ndarray:
    if dtype_id == MXFP4:   # gguf-py's MXFP4 quantizer (test_cpu_ops' encoder predates the type)
        return gguf.quants.quantize(np.ascontiguousarray(w, np.float32), gguf.GGMLQuantizationType.MXFP4).reshape(-1)
    return encode_weights(w, dtype_id)


def decode(raw: np.ndarray, dtype_id: int, rows: int, cols: int) -> np.ndarray:
    if dtype_id == MXFP4:
        return gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType.MXFP4).astype(np.float64)
    return decode_weights(raw, dtype_id, rows, cols)


def bound_for(backend: str, dtype_id: int, n: int) -> float:
    """matmul's nmse bound; MXFP4 takes Q4_0's (a 4-bit type through the same activation paths)."""
    return matmul_bound(backend, Q4_0 if dtype_id == MXFP4 else dtype_id, n)


# ----------------------------------------------------------------------------- router

def route_reference(logits: np.ndarray, k: int, renormalize: bool, bias=None):
    """(weights [n, k], ids [n, k]): softmax over all experts, the k largest (plus bias: ERNIE 4.5's
    selection bias; lower id first on ties), renormalised over the k when asked (Mixtral's softmax
    over the selected logits)."""
    l64 = np.asarray(logits, np.float64)
    p = np.exp(l64 - l64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = p + (0.0 if bias is None else np.asarray(bias, np.float64))
    ids = np.stack([sorted(range(p.shape[1]), key=lambda e: (-c[i, e], e))[:k] for i in range(len(p))])
    w = np.take_along_axis(p, ids, 1)
    if renormalize:
        w /= w.sum(1, keepdims=True)
    return w, ids.astype(np.int32)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("n_expert,k", [(4, 1), (8, 2), (8, 4), (16, 8)])
def test_moe_route_matches_numpy(ops, n_expert, k, renormalize):
    logits = randn(rng_for("route", n_expert, k), 37, n_expert, scale=2.0)
    w, ids = ops.moe_route(logits, k, renormalize)
    w_ref, ids_ref = route_reference(logits, k, renormalize)
    np.testing.assert_array_equal(ids, ids_ref)
    # f32 exp and sums against f64: measured max 7.7e-8 -> 3e-7.
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=3e-7)
    if renormalize:
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_route_softmax_with_selection_bias_matches_numpy(ops, renormalize):
    """ERNIE 4.5's router: softmax probabilities plus a per-expert bias choose, the unbiased
    probabilities weigh."""
    rng = rng_for("route-softmax-bias", 16, 4)
    logits = randn(rng, 37, 16, scale=2.0)
    bias = randn(rng, 1, 16, scale=0.1).reshape(-1)
    w, ids = ops.moe_route(logits, 4, renormalize, select_bias=bias, scale=1.5)
    w_ref, ids_ref = route_reference(logits, 4, renormalize, bias)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_allclose(w, 1.5 * w_ref, rtol=0, atol=1e-6)   # measured max 1.9e-7
    assert (route_reference(logits, 4, renormalize)[1] != ids_ref).any()   # the bias changed the choice


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_route_softmax_with_groups_matches_numpy(ops, renormalize):
    """Mistral 4's router: softmax probabilities, the topk_group groups of largest top-2 sum chosen
    from (transformers' Mistral4TopkRouter)."""
    rng = rng_for("route-softmax-groups", 16, 4)
    logits = randn(rng, 37, 16, scale=2.0)
    w, ids = ops.moe_route(logits, 3, renormalize, n_group=4, topk_group=2, scale=1.5)
    l64 = np.asarray(logits, np.float64)
    p = np.exp(l64 - l64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids_ref = []
    for i in range(len(p)):
        g_score = [np.sort(p[i, 4 * g:4 * g + 4])[-2:].sum() for g in range(4)]
        kept = sorted(range(4), key=lambda g: (-g_score[g], g))[:2]
        ids_ref.append(sorted([e for e in range(16) if e // 4 in kept], key=lambda e: (-p[i, e], e))[:3])
    ids_ref = np.array(ids_ref)
    w_ref = np.take_along_axis(p, ids_ref, 1)
    if renormalize:
        w_ref /= w_ref.sum(1, keepdims=True)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_allclose(w, 1.5 * w_ref, rtol=0, atol=1e-6)   # measured max 1.5e-7
    assert (route_reference(logits, 3, renormalize)[1] != ids_ref).any()   # the groups changed the choice


def test_moe_route_ties_pick_the_lower_id(ops):
    # Equal logits everywhere: experts 0..k-1, each weight 1/k (renormalised) or 1/n_expert.
    logits = np.zeros((3, 8), np.float32)
    logits[1, [2, 5, 6]] = 1.0   # three equal leaders: 2 and 5 are taken
    w, ids = ops.moe_route(logits, 2, True)
    np.testing.assert_array_equal(ids, [[0, 1], [2, 5], [0, 1]])
    np.testing.assert_allclose(w, 0.5, atol=1e-7)
    w, _ = ops.moe_route(logits[:1], 2, False)
    np.testing.assert_allclose(w, 1 / 8, atol=1e-7)


def test_moe_route_rejects_bad_k(ops):
    with pytest.raises(ValueError, match="k must be"):
        ops.moe_route(np.zeros((2, 4), np.float32), 5, True)


def sigmoid_route_reference(logits, k, renormalize, bias=None, scale=1.0, n_group=1, topk_group=1):
    """DeepSeek V3's router as transformers' Glm4MoeTopkRouter / DeepseekV3TopkRouter write it, in
    float64: scores sigmoid(logits), choices scores + bias; the topk_group groups of largest top-2
    choice sum (lower group first on ties) kept; the k largest choices among them (lower id first);
    weights the unbiased scores, renormalised over the k when asked, times scale."""
    s = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    c = s + (0.0 if bias is None else np.asarray(bias, np.float64))
    n, ne = c.shape
    group = ne // n_group
    ids = []
    for i in range(n):
        g_score = [np.sort(c[i, g * group:(g + 1) * group])[-2:].sum() for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: (-g_score[g], g))[:topk_group]
        allowed = [e for e in range(ne) if e // group in kept]
        ids.append(sorted(allowed, key=lambda e: (-c[i, e], e))[:k])
    ids = np.array(ids)
    w = np.take_along_axis(s, ids, 1)
    if renormalize:
        w /= w.sum(1, keepdims=True)
    return w * scale, ids.astype(np.int32)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("n_expert,k,n_group,topk_group", [(8, 2, 1, 1), (16, 4, 4, 2), (64, 8, 8, 4),
                                                           (16, 3, 8, 2)])
def test_moe_route_sigmoid_matches_numpy(ops, n_expert, k, n_group, topk_group, renormalize):
    """GLM-4.5 / DeepSeek V3 routing: sigmoid scores, a selection bias, group-limited choice and the
    routed scaling factor, against the float64 reference."""
    rng = rng_for("route-sigmoid", n_expert, k, n_group)
    logits = randn(rng, 37, n_expert, scale=2.0)
    bias = randn(rng, 1, n_expert, scale=0.5).reshape(-1)
    w, ids = ops.moe_route(logits, k, renormalize, sigmoid=True, select_bias=bias, scale=2.5, n_group=n_group,
                           topk_group=topk_group)
    w_ref, ids_ref = sigmoid_route_reference(logits, k, renormalize, bias, 2.5, n_group, topk_group)
    np.testing.assert_array_equal(ids, ids_ref)
    # f32 sigmoid and sums against f64, times 2.5: measured max 2.8e-7 (weights up to 2.5) -> 1e-6.
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-6)
    # The bias and the groups change the choice: without them the reference picks other experts.
    _, ids_plain = sigmoid_route_reference(logits, k, renormalize)
    assert (ids_plain != ids_ref).any()


def test_moe_route_sigmoid_groups_confine_the_choice(ops):
    """Group 1 holds the two largest choices, but groups 0 and 2 have larger top-2 sums: with one
    group kept the choice is group 0's alone; expert 5 (group 1's best) is never picked."""
    logits = np.full((1, 12), -4.0, np.float32)   # 3 groups of 4
    logits[0, [0, 1]] = [2.0, 1.9]                 # group 0: top-2 sum ~1.75
    logits[0, [5, 6]] = [3.0, -3.0]                # group 1: ~1.0
    logits[0, [8, 9]] = [1.0, 1.0]                 # group 2: ~1.46
    _, ids = ops.moe_route(logits, 2, True, sigmoid=True, n_group=3, topk_group=1)
    np.testing.assert_array_equal(ids, [[0, 1]])
    _, ids = ops.moe_route(logits, 3, True, sigmoid=True, n_group=3, topk_group=2)
    np.testing.assert_array_equal(ids, [[0, 1, 8]])
    _, ids = ops.moe_route(logits, 2, True, sigmoid=True)   # no groups: the largest two
    np.testing.assert_array_equal(ids, [[5, 0]])


def test_moe_route_sigmoid_weights_unbiased_and_unnormalised(ops):
    """A bias that makes expert 3 win is not in its weight, which is sigmoid(logit) itself."""
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    w, ids = ops.moe_route(logits, 2, False, sigmoid=True, select_bias=np.array([0, 0, 0, 5.0], np.float32))
    np.testing.assert_array_equal(ids, [[3, 0]])
    np.testing.assert_allclose(w, 1 / (1 + np.exp(-np.array([[-1.0, 2.0]]))), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigmoid=True, n_group=3), "must divide n_expert"),
    (dict(sigmoid=True, n_group=8), "at least 2 experts"),
    (dict(sigmoid=True, n_group=4, topk_group=5), "topk_group"),
    (dict(sigmoid=True, n_group=4, topk_group=1), "cannot hold k"),
    (dict(sigmoid=True, select_bias=np.zeros(7, np.float32)), "select_bias must be"),
    (dict(sigmoid=True, scale=0.0), "scale must be a positive number"),
])
def test_moe_route_rejects_bad_routing(ops, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.moe_route(np.zeros((2, 8), np.float32), 3, True, **kwargs)


# ----------------------------------------------------------------------------- matmul_id

def routings(n: int, k: int, n_expert: int, rng) -> dict:
    """ids [n, k] (distinct per row) for the routings a model can produce."""
    random = np.stack([rng.permutation(n_expert)[:k] for _ in range(n)]).astype(np.int32)
    # Expert 3 is in every token's selection (first slot), the other slots spread over 0..2:
    # 3 takes every token, experts 4.. take none.
    skewed = np.stack([[3] + list((i + np.arange(k - 1)) % 3) for i in range(n)]).astype(np.int32)
    # Only the last experts are ever chosen: the first n_expert - k take none.
    tail = np.tile(np.arange(n_expert - k, n_expert, dtype=np.int32)[::-1], (n, 1))
    return {"random": random, "one-expert-takes-all": skewed, "experts-take-none": tail}


def matmul_id_reference(experts: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """experts f64 [n_expert, rows, cols]; x [n or n*k, cols]; ids [n, k] -> [n*k, rows]."""
    n, k = ids.shape
    rows = [experts[ids[i, j]] @ np.asarray(x[i if len(x) == n else i * k + j], np.float64)
            for i in range(n) for j in range(k)]
    return np.stack(rows)


@pytest.mark.parametrize("per_slot", [False, True], ids=["x-per-token", "x-per-slot"])
@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("dtype_id", MOE_DTYPES, ids={**DTYPE_NAMES, MXFP4: "MXFP4"}.get)
def test_matmul_id_matches_numpy(ops, dtype_id, n, per_slot):
    n_expert, k, rows, cols = 8, 3, 72, 256   # 72 rows: two of Metal's 64-row GEMM tiles
    rng = rng_for("matmul_id", dtype_id, n, per_slot)
    raws = [encode(randn(rng, rows, cols), dtype_id) for _ in range(n_expert)]
    raw = np.concatenate(raws)   # GGUF's 3-D layout: the experts' matrices one after the other
    experts = np.stack([decode(r, dtype_id, rows, cols) for r in raws]).astype(np.float64)
    x = randn(rng, n * k if per_slot else n, cols)
    for name, ids in routings(n, k, n_expert, rng).items():
        out = ops.matmul_id(raw, dtype_id, n_expert, rows, cols, x, ids)
        assert out.shape == (n * k, rows)
        # CPU: measured nmse <= 0.2 x the decode matmul bound (Q4_0; <= 0.03 x for the other types).
        # Metal: decode (n < 8, a GEMV per slot) and prefill (mul_mm_id: half weight tiles over the
        # slots grouped per expert) against matmul's bound for n tokens: measured <= 0.22 x.
        bound = bound_for("cpu", dtype_id, 1) if backend_of(ops) == "cpu" else bound_for("metal", dtype_id, n)
        assert nmse(out, matmul_id_reference(experts, x, ids)) < bound, name


@pytest.mark.parametrize("tg_rows", ["64", "128", "256"])
@pytest.mark.parametrize("dtype_id", MOE_DTYPES, ids={**DTYPE_NAMES, MXFP4: "MXFP4"}.get)
def test_matmul_id_staged_threadgroup_sizes(ops, monkeypatch, dtype_id, tg_rows):
    """Metal's decode GEMV per slot (mul_mv_id_staged_*) at the larger threadgroups the host picks
    for large matrices (metal_ops.cpp, gemv_tg_rows; forced here): 72 rows, a partial threadgroup."""
    if backend_of(ops) != "metal":
        pytest.skip("rows per threadgroup are a Metal launch setting: the CPU backend has no threadgroups to size")
    monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", tg_rows)
    n_expert, k, rows, cols, n = 8, 3, 72, 256, 2
    rng = rng_for("matmul_id_tg_rows", dtype_id, tg_rows)
    raws = [encode(randn(rng, rows, cols), dtype_id) for _ in range(n_expert)]
    experts = np.stack([decode(r, dtype_id, rows, cols) for r in raws]).astype(np.float64)
    x = randn(rng, n, cols)
    for name, ids in routings(n, k, n_expert, rng).items():
        out = ops.matmul_id(np.concatenate(raws), dtype_id, n_expert, rows, cols, x, ids)
        # the bound of test_matmul_id_matches_numpy (the same kernels at 32-row threadgroups)
        assert nmse(out, matmul_id_reference(experts, x, ids)) < bound_for("metal", dtype_id, n), name


@pytest.mark.parametrize("dtype_id", MOE_DTYPES, ids={**DTYPE_NAMES, MXFP4: "MXFP4"}.get)
def test_matmul_id_decode_tokens_equal_each_token_alone(ops, dtype_id):
    """17 decode tokens (decode_rows: every token a decode row) take Metal's multi-token expert
    GEMV (mul_mv_id_tokens_*: each expert's slots, up to 8 a threadgroup, share its weight windows);
    each slot's row is bit for bit the one-token kernel's for the token alone, under every routing
    (an expert taking all 17 tokens: three token groups)."""
    if backend_of(ops) != "metal":
        pytest.skip("the token groups are Metal's decode GEMV")
    n_expert, k, rows, cols, n = 8, 3, 72, 256, 17
    rng = rng_for("matmul_id_tokens", dtype_id)
    raws = [encode(randn(rng, rows, cols), dtype_id) for _ in range(n_expert)]
    raw = np.concatenate(raws)
    experts = np.stack([decode(r, dtype_id, rows, cols) for r in raws]).astype(np.float64)
    for per_slot in (False, True):
        x = randn(rng, n * k if per_slot else n, cols)
        # and every slot of every token naming expert 5: 51 slots, more token groups than the grid has
        for name, ids in {**routings(n, k, n_expert, rng), "repeated": np.full((n, k), 5, np.int32)}.items():
            out = ops.matmul_id(raw, dtype_id, n_expert, rows, cols, x, ids, decode_rows=n)
            assert nmse(out, matmul_id_reference(experts, x, ids)) < bound_for("metal", dtype_id, 1), name
            for i in range(n):
                xi = x[i * k:(i + 1) * k] if per_slot else x[i:i + 1]
                alone = ops.matmul_id(raw, dtype_id, n_expert, rows, cols, xi, ids[i:i + 1])
                assert np.array_equal(out[i * k:(i + 1) * k], alone), (name, per_slot, i)


@pytest.mark.parametrize("n", [1, 24])
def test_matmul_id_reads_only_the_selected_experts(ops, n):
    """Experts no token chose are never read: their weights are NaN, the output stays finite."""
    n_expert, k, rows, cols = 6, 2, 16, 64
    rng = rng_for("matmul_id_nan", n)
    experts = randn(rng, n_expert, rows, cols)
    experts[[0, 2, 5]] = np.nan
    ids = np.tile(np.array([[4, 1]], np.int32), (n, 1))
    ids[::2] = [3, 1]
    x = randn(rng, n, cols)
    out = ops.matmul_id(experts.reshape(-1).view(np.uint8), F32, n_expert, rows, cols, x, ids)
    assert np.all(np.isfinite(out))
    assert nmse(out, matmul_id_reference(experts.astype(np.float64), x, ids)) < 1e-12   # measured ~1e-15


@pytest.mark.parametrize("n", [1, 3, 40])
@pytest.mark.parametrize("dtype_id", [F32, Q4_K], ids=DTYPE_NAMES.get)
def test_matmul_id_reads_experts_stored_out_of_order(ops, dtype_id, n):
    """12 experts stored as an HF directory's safetensors file holds them, in name order (experts
    0, 1, 10, 11, 2, ...): Metal reads the stack where it lies, each slot's id mapped to its
    expert's place (map_ids_i32), through its decode GEMV (n = 1), multi-token GEMV (n = 3) and
    grouped GEMM (n = 40); the CPU reads each expert where it lies. The bound of
    test_matmul_id_matches_numpy: an expert read for another is off by O(1)."""
    n_expert, k, rows, cols = 12, 3, 72, 256
    rng = rng_for("matmul_id_stored", dtype_id, n)
    stored = sorted(range(n_expert), key=str)        # 0, 1, 10, 11, 2, 3, ...
    raws = {e: encode(randn(rng, rows, cols), dtype_id) for e in range(n_expert)}
    experts = np.stack([decode(raws[e], dtype_id, rows, cols) for e in range(n_expert)]).astype(np.float64)
    x = randn(rng, n, cols)
    for name, ids in routings(n, k, n_expert, rng).items():
        ids = (ids + 8) % n_expert           # experts 8..11 too: their places differ from their ids
        out = ops.matmul_id(np.concatenate([raws[e] for e in stored]), dtype_id, n_expert, rows, cols, x, ids,
                            decode_rows=n if n == 3 else -1, stored=stored)
        bound = bound_for("cpu", dtype_id, 1) if backend_of(ops) == "cpu" else bound_for("metal", dtype_id, n)
        assert nmse(out, matmul_id_reference(experts, x, ids)) < bound, name
    with pytest.raises(ValueError, match="stored must list each expert once"):
        ops.matmul_id(np.concatenate([raws[e] for e in stored]), dtype_id, n_expert, rows, cols, x, ids,
                      stored=[0] * n_expert)


def test_matmul_id_rejects_bad_ids(ops):
    w = np.zeros(4 * 8 * 32, np.float32).view(np.uint8)
    with pytest.raises(ValueError, match="expert id out of range"):
        ops.matmul_id(w, F32, 4, 8, 32, np.zeros((1, 32), np.float32), np.array([[4]], np.int32))


# ----------------------------------------------------------------------------- weighted sum

@pytest.mark.parametrize("n,k", [(1, 2), (9, 4)])
def test_moe_sum_add_matches_numpy(ops, n, k):
    rng = rng_for("moe_sum", n, k)
    out, y, w = randn(rng, n, 48), randn(rng, n * k, 48), np.abs(randn(rng, n, k))
    ref = np.asarray(out, np.float64) + np.einsum("nk,nkd->nd", w.astype(np.float64), y.reshape(n, k, 48))
    np.testing.assert_allclose(ops.moe_sum_add(out, y, w), ref, rtol=1e-6, atol=1e-5)  # f32 sums, measured ~5e-7


# ----------------------------------------------------------------------------- ungated ReLU-squared experts

@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("dtype_id", [F32, Q8_0, Q4_K], ids=DTYPE_NAMES.get)
def test_relu_sq_experts_match_numpy(ops, dtype_id, n):
    """Nemotron 3's expert kind as the model runs it: no gate, each slot's max(up_e x, 0)^2 (relu_sq
    on the [n*k, ffn] slots of matmul_id), down_e of that per slot, the weighted sum added to out.
    Against NumPy in f64 from the same decoded weights."""
    n_expert, k, ffn, dim = 8, 3, 96, 256
    rng = rng_for("relu_sq_experts", dtype_id, n)
    ups = [encode(randn(rng, ffn, dim), dtype_id) for _ in range(n_expert)]
    downs = [encode(randn(rng, dim, ffn) * 0.2, F32) for _ in range(n_expert)]   # ffn 96: not a K-quant row
    up64 = np.stack([decode(r, dtype_id, ffn, dim) for r in ups]).astype(np.float64)
    down64 = np.stack([decode(r, F32, dim, ffn) for r in downs]).astype(np.float64)
    x, out0, w = randn(rng, n, dim), randn(rng, n, dim), np.abs(randn(rng, n, k))
    for name, ids in routings(n, k, n_expert, rng).items():
        h = ops.relu_sq(ops.matmul_id(np.concatenate(ups), dtype_id, n_expert, ffn, dim, x, ids))
        y = ops.matmul_id(np.concatenate(downs), F32, n_expert, dim, ffn, h, ids)
        out = ops.moe_sum_add(out0, y, w)
        h_ref = np.maximum(matmul_id_reference(up64, x, ids), 0.0) ** 2
        y_ref = matmul_id_reference(down64, h_ref, ids)
        ref = out0 + np.einsum("nk,nkd->nd", w.astype(np.float64), y_ref.reshape(n, k, dim))
        # matmul_id's bound (test_matmul_id_matches_numpy): measured <= 0.1 x on the CPU, <= 0.32 x on
        # Metal (Q8_0 and Q4_K; F32 <= 0.1 x)
        bound = bound_for("cpu", dtype_id, 1) if backend_of(ops) == "cpu" else bound_for("metal", dtype_id, n)
        assert nmse(out, ref) < bound, name


# ----------------------------------------------------------------------------- MXFP4

def mxfp4_block(e: int, nibbles) -> bytes:
    """One MXFP4 block: the E8M0 byte, then 16 bytes of nibbles (weight j low, j + 16 high)."""
    q = np.asarray(nibbles, np.uint8)
    return bytes([e]) + bytes((q[:16] | (q[16:] << 4)).tolist())


@pytest.mark.parametrize("n", [1, 3, 20])
def test_mxfp4_matmul_matches_gguf_dequantize(ops, n):
    """gpt-oss's expert type: 32 E2M1 values and an E8M0 scale per block, against gguf.quants'
    dequantization; rows of tiny and large scales too."""
    rows, cols = 40, 256
    rng = rng_for("mxfp4", n)
    w = randn(rng, rows, cols)
    w[3] *= 1e-3   # rows of other E8M0 exponents (the range's ends: test_mxfp4_get_rows_is_exact)
    w[5] *= 30.0
    raw = encode(w, MXFP4)
    x = randn(rng, n, cols)
    out = ops.matmul(raw, MXFP4, rows, cols, x)
    ref = np.asarray(x, np.float64) @ decode(raw, MXFP4, rows, cols).T
    # Measured nmse: CPU 4.3e-9 (n = 1, int8 activations; bound 2e-8), 3.0e-14 (n = 20, f32 panel;
    # 3e-12); Metal 1.2e-13 (GEMV; 2e-11), 2.5e-14 (half tiles; 2e-7). Bounds are Q4_0's.
    assert nmse(out, ref) < bound_for(backend_of(ops), MXFP4, n)


def test_mxfp4_decode_rows_equal_each_row_alone(ops):
    """9 decode rows (decode_rows: Metal's multi-token GEMV, token groups of 8 and 1) of MXFP4
    weights: each row bit for bit the one-row GEMV's on the row alone, and the exact product's bound."""
    if backend_of(ops) != "metal":
        pytest.skip("the token groups are Metal's decode GEMV")
    rows, cols, n = 40, 544, 9   # 17 blocks a row: 17-byte blocks at every alignment, a partial window
    rng = rng_for("mxfp4_tokens")
    raw = encode(randn(rng, rows, cols), MXFP4)
    x = randn(rng, n, cols)
    out = ops.matmul(raw, MXFP4, rows, cols, x, decode_rows=n)
    ref = np.asarray(x, np.float64) @ decode(raw, MXFP4, rows, cols).T
    assert nmse(out, ref) < bound_for("metal", MXFP4, 1)
    for i in range(n):
        assert np.array_equal(out[i], ops.matmul(raw, MXFP4, rows, cols, x[i:i + 1])[0]), i


def test_mxfp4_get_rows_is_exact(ops):
    """Every E8M0 scale class (2^-128 and 2^-127 subnormal, 1, the largest) and every nibble,
    dequantized bit for bit as gguf.quants does."""
    nibbles = np.arange(32) % 16
    raw = np.frombuffer(b"".join(mxfp4_block(e, nibbles) for e in (0, 1, 127, 128, 200, 250)), np.uint8)
    rows = 6
    table = np.frombuffer(raw.tobytes(), np.uint8).reshape(rows, 17)   # one block per row
    ref = gguf.quants.dequantize(table, gguf.GGMLQuantizationType.MXFP4).astype(np.float32)
    out = ops.get_rows(raw, MXFP4, rows, 32, np.arange(rows, dtype=np.int32))
    np.testing.assert_array_equal(out, ref)
