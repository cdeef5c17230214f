"""Random-weight Llama GGUFs of real shapes, for speed measurements only (their text is noise).

    python bench/synthetic_gguf.py OUT.gguf --preset llama32-1b --type Q4_K_M

Unlike ../shared/tools/make_synthetic_gguf.py (Q4_0, Q8_0, F16) this also writes the K-quant
files users download: Q4_K_M / Q5_K_M mix tensor types as llama.cpp's quantizer does (Q6_K for
output.weight and for attn_v / ffn_down in the layers `_more_bits` picks, Q4_K / Q5_K elsewhere),
so an engine does the same per-type work on it as on a real file of the mix. Written with forgert's
own streaming GGUF writer: no extra package, and an 8B model never sits in memory at once.
Every block gets fixed small scales (FIXED_BYTES), so activations stay finite; its quants are random.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from forgert import ggml_types as gt  # noqa: E402
from forgert.gguf import ARRAY, BOOL, FLOAT32, INT32, STRING  # noqa: E402
from forgert.gguf_writer import GGUFWriter  # noqa: E402

PRESETS = {  # name: (layers, hidden, ffn, heads, kv_heads, vocab, ctx)
    "smollm2-135m": (30, 576, 1536, 9, 3, 49152, 8192),
    "llama32-1b": (16, 2048, 8192, 32, 8, 128256, 8192),
    "llama3-8b": (32, 4096, 14336, 32, 8, 128256, 8192),
}
# Mixture-of-experts shapes (arch qwen3moe): name: (layers, hidden, expert ffn, heads, kv_heads,
# head_dim, experts, experts used, vocab, ctx). Qwen3-30B-A3B: 48 layers of 128 experts, 8 used.
MOE_PRESETS = {
    "qwen3-30b-a3b": (48, 2048, 768, 32, 4, 128, 128, 8, 151936, 8192),
}
# Gated DeltaNet hybrids (arch qwen35: three recurrent layers to one attention layer): name:
# (layers, hidden, ffn, heads, kv_heads, head_dim, linear key heads, linear value heads, linear
# head width, vocab, ctx). The sizes of Qwen3.5-4B and -9B's configs as published (hidden 2560 /
# 4096, 32 layers, 16 query / 4 KV heads of 256, 16 key / 32 value heads of 128, vocab 248320).
HYBRID_PRESETS = {
    "qwen35-4b": (32, 2560, 9216, 16, 4, 256, 16, 32, 128, 248320, 8192),
    "qwen35-9b": (32, 4096, 12288, 16, 4, 256, 16, 32, 128, 248320, 8192),
}
# Multi-head latent attention MoEs (arch deepseek2, llama.cpp's converter's split form: attn_k_b /
# attn_v_b, the latent cached once per position). q_lora 0: a plain attn_q (V2-Lite). gating 1:
# softmax, 2: sigmoid (with an exp_probs_b selection bias). The "-Nl" variants keep the first N
# layers (the leading dense one among them) so a file fits a small VM; per-layer work is the model's.
DEEPSEEK2_PRESETS = {
    "deepseek-v2-lite": dict(layers=27, hidden=2048, heads=16, q_lora=0, kv_lora=512, nope=128, rope=64, v=128,
                             experts=64, used=6, shared=2, expert_ffn=1408, dense=1, dense_ffn=10944,
                             gating=1, bias=False, norm=False, scale=1.0, vocab=102400, ctx=163840),
    "glm47-flash": dict(layers=47, hidden=2048, heads=20, q_lora=768, kv_lora=512, nope=192, rope=64, v=256,
                        experts=64, used=4, shared=1, expert_ffn=1536, dense=1, dense_ffn=10240,
                        gating=2, bias=True, norm=True, scale=1.8, vocab=154880, ctx=202752),
}
for _name, _n in [("deepseek-v2-lite", 6), ("glm47-flash", 6)]:
    DEEPSEEK2_PRESETS[f"{_name}-{_n}l"] = {**DEEPSEEK2_PRESETS[_name], "layers": _n}
T = {name: type_id for type_id, (name, _, _) in gt.GGML_TYPES.items()}   # "Q4_K" -> 12


def _f16(x: float) -> bytes:
    return np.float16(x).tobytes()


# Fixed bytes of each block: the scale fields (the quants stay random). They make the weights
# small and zero-mean, about as a real checkpoint's are, so activations stay finite and normal:
# random Q4_K mins or Q6_K scales blow the residual stream up to inf/NaN within a few hundred
# positions, and arithmetic on such values is not what an engine does on a real model.
#   Q4_K: every sub-block scale and min 8 (bytes 0-7 = 8, bytes 8-11 = 0x88), dmin = 7.5 d,
#         so w = 8 d (q - 7.5), |w| <= 0.03;  Q6_K: sub-block scales 1, w = d (q - 32).
FIXED_BYTES = {
    T["Q4_0"]: [(0, _f16(0.002))], T["Q5_0"]: [(0, _f16(0.001))], T["Q8_0"]: [(0, _f16(0.0002))],
    T["Q4_1"]: [(0, _f16(0.002) + _f16(-0.015))],  # w = d q + m = 0.002 (q - 7.5)
    T["Q4_K"]: [(0, _f16(0.0005) + _f16(0.00375) + bytes([8] * 8 + [0x88] * 4))],
    T["Q6_K"]: [(192, bytes([1] * 16) + _f16(0.0005))],
    # Q5_K: Q4_K's scales and mins, dmin = 15.5 d, so w = 8 d (q - 15.5), q in 0..31, |w| <= 0.031;
    # Q5_1 (its fallback): w = d q + m = 0.001 (q - 15.5)
    T["Q5_K"]: [(0, _f16(0.00025) + _f16(0.003875) + bytes([8] * 8 + [0x88] * 4))],
    T["Q5_1"]: [(0, _f16(0.001) + _f16(-0.0155))],
    # Q2_K: scale 2, min 3 per sub-block (bytes 0-15 = 0x32), d = dmin: w = d (2 q - 3), q in 0..3;
    # Q3_K: sub-block scales 1 (6-bit, stored + 32: low nibbles 0x11, high pairs 0xAA), w = d q, q in -4..3
    T["Q2_K"]: [(0, bytes([0x32] * 16)), (80, _f16(0.002) + _f16(0.002))],
    T["Q3_K"]: [(96, bytes([0x11] * 8 + [0xAA] * 4) + _f16(0.002))],
    # the lattice types: d at the block's start, codebook indices, signs and 4-bit scales random
    # (|w| <= 167 d for IQ2, 480 d for IQ3_XXS, 465 d for IQ3_S, 17 d for IQ1_S)
    T["IQ2_XXS"]: [(0, _f16(0.0002))], T["IQ2_XS"]: [(0, _f16(0.0002))], T["IQ2_S"]: [(0, _f16(0.0002))],
    T["IQ3_XXS"]: [(0, _f16(0.0001))], T["IQ3_S"]: [(0, _f16(0.0001))], T["IQ1_S"]: [(0, _f16(0.002))],
    T["IQ4_NL"]: [(0, _f16(0.0002))],  # the fallback where rows are not whole super-blocks
    T["IQ1_M"]: [],  # its f16 d is spread over the scales' top nibbles: random_blocks sets it
}
# llama.cpp's quantizer falls back to these where a row is not whole 256-weight super-blocks
# (SmolLM2's hidden size 576): Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K / Q3_K -> Q4_0, the lattice types -> IQ4_NL.
K_FALLBACK = {T["Q4_K"]: T["Q5_0"], T["Q5_K"]: T["Q5_1"], T["Q6_K"]: T["Q8_0"], T["Q2_K"]: T["Q4_0"], T["Q3_K"]: T["Q4_0"],
              **{T[n]: T["IQ4_NL"] for n in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")}}
# general.file_type values (llama.cpp's llama_ftype) of the files these mimic.
FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "F16": 1, "BF16": 32,
              # one low-bit K-quant for every matrix (llama.cpp's Q2_K / Q3_K_S-M-L mixes promote some
              # tensors; these time the type itself)
              "Q2_K": 10, "Q3_K": 11,
              # one lattice type for every matrix (llama.cpp's IQ mixes promote some tensors; these
              # time the type itself)
              "IQ2_XXS": 19, "IQ2_XS": 20, "IQ3_XXS": 23, "IQ1_S": 24, "IQ3_S": 26, "IQ2_S": 28, "IQ1_M": 31}


def _more_bits(i: int, n: int) -> bool:
    """The layers llama.cpp's Q4_K_M gives 6-bit attn_v / ffn_down: the first and last eighth,
    and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name: str, layer: int, n_layers: int, ftype: str, cols: int) -> int:
    t = _mix_type(name, layer, n_layers, ftype)
    return K_FALLBACK[t] if t in K_FALLBACK and cols % 256 else t


def _mix_type(name: str, layer: int, n_layers: int, ftype: str) -> int:
    """llama.cpp's Q4_K_M / Q5_K_M mix (the same rules, Q4_K or Q5_K the base type); one type else."""
    if ftype not in ("Q4_K_M", "Q5_K_M"):
        return T[ftype]
    if name == "output.weight":
        return T["Q6_K"]
    # (llama.cpp counts a recurrent layer's attn_qkv as its attn_v)
    if (name.endswith(("attn_v.weight", "attn_qkv.weight", "ffn_down.weight", "ffn_down_exps.weight"))
            and _more_bits(layer, n_layers)):
        return T["Q6_K"]
    return T[ftype[:4]]


def random_blocks(rng, rows: int, cols: int, type_id: int) -> np.ndarray:
    """uint8 [rows, row_nbytes]: quant blocks of random quants and FIXED_BYTES scales; F16 / BF16:
    normal weights of standard deviation 0.02 (random bits would hold NaNs)."""
    if type_id in (T["F16"], T["BF16"]):
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02))
        half = x.astype(np.float16) if type_id == T["F16"] else (x.view(np.uint32) >> 16).astype(np.uint16)
        return half.view(np.uint8).reshape(rows, -1)
    _, per_block, block_bytes = gt.GGML_TYPES[type_id]
    raw = rng.integers(0, 256, size=(rows, cols // per_block, block_bytes), dtype=np.uint8)
    for off, fixed in FIXED_BYTES[type_id]:
        raw[:, :, off:off + len(fixed)] = np.frombuffer(fixed, dtype=np.uint8)
    if type_id == T["IQ1_M"]:  # d = 0.002: u16 w of the scales (bytes 48 + 2 w, 49 + 2 w) holds d's bits 4 w.. on top
        d = int(np.float16(0.002).view(np.uint16))
        for w in range(4):
            hi = raw[:, :, 49 + 2 * w]
            raw[:, :, 49 + 2 * w] = (hi & 0x0F) | (((d >> (4 * w)) & 0xF) << 4)
    return raw.reshape(rows, -1)


def cached(models: Path, preset: str, ftype: str) -> Path:
    """models/synthetic-<preset>-<ftype>.gguf, written on first use (an 8B file takes minutes)."""
    path = models / f"synthetic-{preset}-{ftype}.gguf"
    if not path.exists():
        models.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write(path, preset, ftype)
        print(f"wrote {path.name} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return path


class RandomTensors:
    """A GGUFWriter's tensors and the makers of their bytes, in add order (written at the end, a
    tensor at a time): matrices of random quant blocks in the type llama.cpp's mix gives each
    (tensor_type), F32 tensors made by a given function."""

    def __init__(self, w: GGUFWriter, n_layers: int, ftype: str, seed: int, per_tensor_seed: bool = False):
        self.w, self.n_layers, self.ftype, self.seed = w, n_layers, ftype, seed
        self.rng = np.random.default_rng(seed)
        # per_tensor_seed: each tensor's bytes from a generator of (seed, its name), so that two files
        # of different layer counts hold the same bytes in the tensors they share (a draft pair)
        self.per_tensor_seed = per_tensor_seed
        self.makers = []   # one per tensor, in add_tensor order: () -> bytes

    def matrix(self, name, rows, cols, layer=-1, stack=0, zero=False):   # ne (cols, rows[, stack]): numpy [stack, rows, cols]
        t = tensor_type(name, layer, self.n_layers, self.ftype, cols)
        self.w.add_tensor(name, (cols, rows, stack) if stack else (cols, rows), t)
        if zero:   # all-zero blocks: every scale 0, so every weight 0 (the layer adds nothing)
            n = rows * max(stack, 1) * gt.row_nbytes(t, cols)
            self.makers.append(lambda: np.zeros(n, dtype=np.uint8))
            return
        rng = (lambda: np.random.default_rng([self.seed, zlib.crc32(name.encode())])) if self.per_tensor_seed else (lambda: self.rng)
        self.makers.append(lambda: random_blocks(rng(), rows * max(stack, 1), cols, t))

    def f32(self, name, shape, make):
        self.w.add_tensor(name, shape, T["F32"])
        self.makers.append(make)

    def ones(self, name, n):   # a norm's weight: n ones (the norm as is)
        self.f32(name, (n,), lambda: np.ones(n, dtype=np.float32))

    def write(self, out: Path) -> None:
        self.w.write(out, lambda i: self.makers[i]())


def write(out: Path, preset: str, ftype: str, seed: int = 0, layers: int | None = None,
          zero_from: int | None = None) -> None:
    """layers: write only the preset's first `layers` layers (tensor types as in the whole preset);
    zero_from: layers from this one on get all-zero attn_output and ffn_down, so they add nothing to
    the residual stream. A file of `zero_from=N` and one of `layers=N` (the same preset, type and
    seed) give the same logits: a draft pair that agrees on every token at the costs of two sizes."""
    if (layers is not None or zero_from is not None) and preset not in PRESETS:
        raise SystemExit("--layers / --zero-from: dense presets only")
    if preset in MOE_PRESETS:
        return write_moe(out, preset, ftype, seed)
    if preset in HYBRID_PRESETS:
        return write_hybrid(out, preset, ftype, seed)
    if preset in DEEPSEEK2_PRESETS:
        return write_deepseek2(out, preset, ftype, seed)
    L, H, F, NH, NKV, V, CTX = PRESETS[preset]
    n_write = L if layers is None else layers
    kv = NKV * (H // NH)
    w = GGUFWriter("llama")
    w.add_str("general.name", f"synthetic-{preset}-{ftype}")
    w.add_u32("general.file_type", FILE_TYPES[ftype])
    for key, value in [("block_count", n_write), ("context_length", CTX), ("embedding_length", H),
                       ("feed_forward_length", F), ("attention.head_count", NH),
                       ("attention.head_count_kv", NKV), ("rope.dimension_count", H // NH),
                       ("vocab_size", V)]:
        w.add_u32(f"llama.{key}", value)
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_f32("llama.rope.freq_base", 500000.0)
    add_vocab(w, V)

    ts = RandomTensors(w, L, ftype, seed, per_tensor_seed=layers is not None or zero_from is not None)
    matrix = ts.matrix

    def norm(name):
        ts.ones(name, H)

    matrix("token_embd.weight", V, H)
    for i in range(n_write):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        norm(p + "ffn_norm.weight")
        for name, rows, cols in [("attn_q", H, H), ("attn_k", kv, H), ("attn_v", kv, H), ("attn_output", H, H),
                                 ("ffn_gate", F, H), ("ffn_up", F, H), ("ffn_down", H, F)]:
            zero = zero_from is not None and i >= zero_from and name in ("attn_output", "ffn_down")
            matrix(p + name + ".weight", rows, cols, i, zero=zero)
    norm("output_norm.weight")
    matrix("output.weight", V, H)
    ts.write(out)


def write_moe(out: Path, preset: str, ftype: str, seed: int = 0) -> None:
    """A Qwen3-MoE file in llama.cpp's layout: 3-D expert stacks ffn_{gate,up,down}_exps
    [experts, rows, cols], an F32 router ffn_gate_inp, per-head q/k norms. The router's weights
    are random, so every expert gets tokens, as in a trained model's spread."""
    L, H, F, NH, NKV, D, E, K, V, CTX = MOE_PRESETS[preset]
    arch = "qwen3moe"
    w = GGUFWriter(arch)
    w.add_str("general.name", f"synthetic-{preset}-{ftype}")
    w.add_u32("general.file_type", FILE_TYPES[ftype])
    for key, value in [("block_count", L), ("context_length", CTX), ("embedding_length", H),
                       ("feed_forward_length", F), ("expert_feed_forward_length", F),
                       ("expert_count", E), ("expert_used_count", K), ("attention.head_count", NH),
                       ("attention.head_count_kv", NKV), ("attention.key_length", D),
                       ("attention.value_length", D), ("rope.dimension_count", D), ("vocab_size", V)]:
        w.add_u32(f"{arch}.{key}", value)
    w.add_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_f32(f"{arch}.rope.freq_base", 1000000.0)
    add_vocab(w, V)
    ts = RandomTensors(w, L, ftype, seed)
    matrix, f32, rng = ts.matrix, ts.f32, ts.rng

    matrix("token_embd.weight", V, H)
    for i in range(L):
        p = f"blk.{i}."
        ts.ones(p + "attn_norm.weight", H)
        ts.ones(p + "ffn_norm.weight", H)
        ts.ones(p + "attn_q_norm.weight", D)
        ts.ones(p + "attn_k_norm.weight", D)
        for name, rows, cols in [("attn_q", NH * D, H), ("attn_k", NKV * D, H), ("attn_v", NKV * D, H),
                                 ("attn_output", H, NH * D)]:
            matrix(p + name + ".weight", rows, cols, i)
        f32(p + "ffn_gate_inp.weight", (H, E),
            lambda: rng.standard_normal((E, H), dtype=np.float32) * np.float32(0.02))
        matrix(p + "ffn_gate_exps.weight", F, H, i, E)
        matrix(p + "ffn_up_exps.weight", F, H, i, E)
        matrix(p + "ffn_down_exps.weight", H, F, i, E)
    ts.ones("output_norm.weight", H)
    matrix("output.weight", V, H)
    ts.write(out)


def write_hybrid(out: Path, preset: str, ftype: str, seed: int = 0) -> None:
    """A Qwen3.5 file in llama.cpp's qwen35 layout: every fourth layer gated attention (attn_q
    holding each head's query and gate, per-head q/k norms, a quarter of each head rotated), the
    others Gated DeltaNet (attn_qkv, attn_gate, ssm_alpha / ssm_beta, F32 ssm_conv1d, ssm_a,
    ssm_dt.bias, ssm_norm, ssm_out). A in -0.1..-1 and small convolution kernels keep the recurrent
    states as a trained model's: decaying, bounded."""
    L, H, F, NH, NKV, D, KH, VH, SD, V, CTX = HYBRID_PRESETS[preset]
    arch, C, VW = "qwen35", 2 * KH * SD + VH * SD, VH * SD
    w = GGUFWriter(arch)
    w.add_str("general.name", f"synthetic-{preset}-{ftype}")
    w.add_u32("general.file_type", FILE_TYPES[ftype])
    for key, value in [("block_count", L), ("context_length", CTX), ("embedding_length", H),
                       ("feed_forward_length", F), ("attention.head_count", NH), ("attention.head_count_kv", NKV),
                       ("attention.key_length", D), ("attention.value_length", D), ("rope.dimension_count", D // 4),
                       ("ssm.conv_kernel", 4), ("ssm.state_size", SD), ("ssm.group_count", KH),
                       ("ssm.time_step_rank", VH), ("ssm.inner_size", VW), ("full_attention_interval", 4),
                       ("vocab_size", V)]:
        w.add_u32(f"{arch}.{key}", value)
    pairs = D // 8   # rotated pairs; Qwen3.5's 32 split 11 / 11 / 10 among its multimodal sections
    sections = [pairs - pairs * 11 // 32 - pairs * 10 // 32, pairs * 11 // 32, pairs * 10 // 32, 0]
    w.add(f"{arch}.rope.dimension_sections", (ARRAY, INT32), np.asarray(sections, dtype=np.int32))
    w.add_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_f32(f"{arch}.rope.freq_base", 10000000.0)
    add_vocab(w, V)
    ts = RandomTensors(w, L, ftype, seed)
    matrix, f32, rng = ts.matrix, ts.f32, ts.rng

    matrix("token_embd.weight", V, H)
    for i in range(L):
        p = f"blk.{i}."
        ts.ones(p + "attn_norm.weight", H)
        ts.ones(p + "post_attention_norm.weight", H)
        if (i + 1) % 4:
            for name, rows in [("attn_qkv", C), ("attn_gate", VW), ("ssm_beta", VH), ("ssm_alpha", VH)]:
                matrix(p + name + ".weight", rows, H, i)
            f32(p + "ssm_conv1d.weight", (4, C), lambda: rng.standard_normal((C, 4), dtype=np.float32) * 0.3)
            f32(p + "ssm_dt.bias", (VH,), lambda: np.zeros(VH, dtype=np.float32))
            f32(p + "ssm_a", (VH,), lambda: -rng.uniform(0.1, 1.0, VH).astype(np.float32))
            ts.ones(p + "ssm_norm.weight", SD)
            matrix(p + "ssm_out.weight", H, VW, i)
        else:
            ts.ones(p + "attn_q_norm.weight", D)
            ts.ones(p + "attn_k_norm.weight", D)
            for name, rows, cols in [("attn_q", 2 * NH * D, H), ("attn_k", NKV * D, H), ("attn_v", NKV * D, H),
                                     ("attn_output", H, NH * D)]:
                matrix(p + name + ".weight", rows, cols, i)
        for name, rows, cols in [("ffn_gate", F, H), ("ffn_up", F, H), ("ffn_down", H, F)]:
            matrix(p + name + ".weight", rows, cols, i)
    ts.ones("output_norm.weight", H)
    matrix("output.weight", V, H)
    ts.write(out)


def write_deepseek2(out: Path, preset: str, ftype: str, seed: int = 0) -> None:
    """A DeepSeek-V2 / V3-style file as llama.cpp's converter writes it for arch deepseek2, attn_kv_b
    split into attn_k_b / attn_v_b (the absorbed form): key_length / value_length then describe
    the cached latent (kv_lora + rope / kv_lora) and the _mla keys the heads; head_count_kv 1."""
    c = DEEPSEEK2_PRESETS[preset]
    L, H, NH, E, V = c["layers"], c["hidden"], c["heads"], c["experts"], c["vocab"]
    KL, QL, NOPE, ROPE, VD, FE = c["kv_lora"], c["q_lora"], c["nope"], c["rope"], c["v"], c["expert_ffn"]
    arch = "deepseek2"
    w = GGUFWriter(arch)
    w.add_str("general.name", f"synthetic-{preset}-{ftype}")
    w.add_u32("general.file_type", FILE_TYPES[ftype])
    # q_lora_rank is written even when 0: llama.cpp requires it unless the layer count is V2-Lite's
    for key, value in [("block_count", L), ("context_length", c["ctx"]), ("embedding_length", H),
                       ("feed_forward_length", c["dense_ffn"]), ("expert_feed_forward_length", FE),
                       ("expert_count", E), ("expert_used_count", c["used"]), ("expert_shared_count", c["shared"]),
                       ("leading_dense_block_count", c["dense"]), ("expert_gating_func", c["gating"]),
                       ("attention.head_count", NH), ("attention.head_count_kv", 1),
                       ("attention.q_lora_rank", QL), ("attention.kv_lora_rank", KL),
                       ("attention.key_length", KL + ROPE), ("attention.value_length", KL),
                       ("attention.key_length_mla", NOPE + ROPE), ("attention.value_length_mla", VD),
                       ("rope.dimension_count", ROPE), ("vocab_size", V)]:
        w.add_u32(f"{arch}.{key}", value)
    w.add(f"{arch}.expert_weights_norm", BOOL, c["norm"])
    w.add_f32(f"{arch}.expert_weights_scale", c["scale"])
    w.add_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_f32(f"{arch}.rope.freq_base", 10000.0)
    add_vocab(w, V)
    ts = RandomTensors(w, L, ftype, seed)
    matrix, f32, rng = ts.matrix, ts.f32, ts.rng

    matrix("token_embd.weight", V, H)
    for i in range(L):
        p = f"blk.{i}."
        ts.ones(p + "attn_norm.weight", H)
        if QL:   # query through a rank-QL bottleneck with its own norm: [QL, H], [NH*(nope+rope), QL]
            ts.ones(p + "attn_q_a_norm.weight", QL)
            matrix(p + "attn_q_a.weight", QL, H, i)
            matrix(p + "attn_q_b.weight", NH * (NOPE + ROPE), QL, i)
        else:
            matrix(p + "attn_q.weight", NH * (NOPE + ROPE), H, i)
        matrix(p + "attn_kv_a_mqa.weight", KL + ROPE, H, i)            # [latent + shared rope key, H]
        ts.ones(p + "attn_kv_a_norm.weight", KL)
        matrix(p + "attn_k_b.weight", KL, NOPE, i, NH)                 # per head [KL, nope]: q_nope -> latent
        matrix(p + "attn_v_b.weight", VD, KL, i, NH)                   # per head [v, KL]: latent -> value
        matrix(p + "attn_output.weight", H, NH * VD, i)
        ts.ones(p + "ffn_norm.weight", H)
        if i < c["dense"]:
            F = c["dense_ffn"]
            for name, rows, cols in [("ffn_gate", F, H), ("ffn_up", F, H), ("ffn_down", H, F)]:
                matrix(p + name + ".weight", rows, cols, i)
            continue
        f32(p + "ffn_gate_inp.weight", (H, E), lambda: rng.standard_normal((E, H), dtype=np.float32) * np.float32(0.02))
        if c["bias"]:
            f32(p + "exp_probs_b.bias", (E,), lambda: rng.standard_normal(E, dtype=np.float32) * np.float32(0.01))
        matrix(p + "ffn_gate_exps.weight", FE, H, i, E)
        matrix(p + "ffn_up_exps.weight", FE, H, i, E)
        matrix(p + "ffn_down_exps.weight", H, FE, i, E)
        S = FE * c["shared"]   # the shared experts as one SwiGLU of their summed width
        for name, rows, cols in [("ffn_gate_shexp", S, H), ("ffn_up_shexp", S, H), ("ffn_down_shexp", H, S)]:
            matrix(p + name + ".weight", rows, cols, i)
    ts.ones("output_norm.weight", H)
    matrix("output.weight", V, H)
    ts.write(out)


def add_vocab(w: GGUFWriter, V: int) -> None:
    # A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then plain pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581w{i}" for i in range(V - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)     # UNKNOWN, CONTROL, BYTE, NORMAL
    w.add_str("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", (ARRAY, STRING), tokens)
    w.add("tokenizer.ggml.scores", (ARRAY, FLOAT32), np.zeros(V, dtype=np.float32))
    w.add("tokenizer.ggml.token_type", (ARRAY, INT32), np.asarray(types, dtype=np.int32))
    w.add_u32("tokenizer.ggml.bos_token_id", 1)
    w.add_u32("tokenizer.ggml.eos_token_id", 2)


def bytes_per_token(path: Path) -> int:
    """Weight bytes one decode token reads: every tensor but the embedding table (one row of
    it), and of each expert stack only the used experts' share (expert_used_count / expert_count)."""
    from forgert.gguf import GGUFFile
    with GGUFFile(path) as g:
        arch = g.get("general.architecture")
        used, count = g.get(f"{arch}.expert_used_count", 1), g.get(f"{arch}.expert_count", 1)
        total = 0
        for t in g.tensors.values():
            if t.name == "token_embd.weight":
                total += t.nbytes // t.shape[-1]
            elif "_exps." in t.name:
                total += t.nbytes * used // count
            else:
                total += t.nbytes
        return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="llama32-1b", choices=[*PRESETS, *MOE_PRESETS, *HYBRID_PRESETS, *DEEPSEEK2_PRESETS])
    ap.add_argument("--type", default="Q4_K_M", choices=FILE_TYPES)
    ap.add_argument("--layers", type=int, default=None, help="only the first N layers (a draft of --zero-from N)")
    ap.add_argument("--zero-from", type=int, default=None,
                    help="layers from N on add nothing (zero attn_output, ffn_down): its draft is --layers N")
    a = ap.parse_args()
    write(a.out, a.preset, a.type, layers=a.layers, zero_from=a.zero_from)


if __name__ == "__main__":
    main()
