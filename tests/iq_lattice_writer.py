"""Random but valid blocks of the IQ lattice types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
IQ3_S) for tests. There is no quantizer to these types here (llama.cpp makes them with an
importance matrix) and none is needed: every byte pattern is a block (codebook indices, signs and
scales), so random bytes with a chosen f16 d are a weight matrix, which the references read
through gguf.quants.dequantize. d is set so that a matrix has a wanted rms (the weights are
linear in d)."""
from __future__ import annotations

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
TYPES = ("IQ3_S", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")


def block_bytes(name: str) -> int:
    return gguf.GGML_QUANT_SIZES[T[name]][1]


def set_d(blocks: np.ndarray, name: str, d) -> np.ndarray:
    """blocks (uint8 [n, block bytes]) with their f16 d set to d (a scalar or one per block):
    the first two bytes, IQ1_M's the top nibbles of its four u16 scale words (bits 4 w.. of d in
    word w)."""
    blocks = blocks.copy()
    dv = np.broadcast_to(np.asarray(d, np.float16), (len(blocks),)).copy().view(np.uint16)
    if name != "IQ1_M":
        blocks[:, 0:2] = dv.view(np.uint8).reshape(-1, 2)
        return blocks
    sc = blocks[:, -8:].copy().view(np.uint16)                       # [n, 4]
    for w in range(4):
        sc[:, w] = (sc[:, w] & 0x0FFF) | (((dv >> (4 * w)) & 0xF) << 12)
    blocks[:, -8:] = sc.view(np.uint8)
    return blocks


def random_blocks(rng: np.random.Generator, name: str, n: int, d) -> np.ndarray:
    """n random blocks of type `name` with f16 d (scalar or per block): uint8 [n, block bytes]."""
    return set_d(rng.integers(0, 256, (n, block_bytes(name)), dtype=np.uint8), name, d)


def random_matrix(rng: np.random.Generator, name: str, rows: int, cols: int, rms: float = 1.0) -> np.ndarray:
    """A random [rows, cols] matrix of type `name` (uint8 [rows, row bytes]) whose weights have
    about the given rms: random blocks at d = 1, then one d for all scaled to it."""
    n = rows * cols // 256
    b = random_blocks(rng, name, n, 1.0)
    r = float(np.sqrt(np.mean(np.square(gguf.quants.dequantize(b.reshape(-1), T[name]).astype(np.float64)))))
    return set_d(b, name, rms / r).reshape(rows, -1)


def mix_overrides(tensors: dict, name: str, seed: int, embed: bool = True) -> dict:
    """write_gguf's raw_overrides for a tiny model: every matrix whose rows are whole super-blocks
    (256 weights) as random `name` blocks with the rms of the weight it replaces, except the output
    matrix (F32: the logits stay as sharp as the model's), and token_embd unless `embed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for tname, w in tensors.items():
        if w.ndim != 2 or w.shape[1] % 256 or tname == "output.weight" or (tname == "token_embd.weight" and not embed):
            continue
        rms = float(np.sqrt(np.mean(np.square(w.astype(np.float64)))))
        out[tname] = (random_matrix(rng, name, w.shape[0], w.shape[1], rms), T[name])
    return out
