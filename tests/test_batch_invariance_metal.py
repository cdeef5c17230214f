"""Batch invariance on the emulated Metal device (docs/design.md "Batch invariance"): the same
scenarios as tests/test_batch_invariance.py on backend="metal". A sequence's temperature-0 tokens
and logits are bit-identical alone and in a batch whose steps also carry another prompt's prefill
chunks: every decode row takes the GEMV and the decode attention kernel cut as for one query,
every prompt-prefix row the GEMM and the prefill attention kernel, whatever else shares the step.

The reference is the sequence alone through the engine's single-sequence calls (Engine.prefill,
then Engine.forward one token at a time), equality exact (np.array_equal). Each case runs under
one of the emulator's thread orders (forward, reverse, random), so that every order is covered
at least once: a result that depended on the order threads run in would differ between the lone
and the batched run. Tiny models and few steps: the emulator runs every GPU thread as a fiber.
On a Mac (macos.yml) the same cases run on the GPU.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from test_batch_invariance import alone, batched, model_files, token_ids  # noqa: F401  (model_files: the fixture)

pytestmark = pytest.mark.metal

STEPS = 6           # decode steps of every sequence
N_CTX = 96
LONG_CTX = 352      # past 128 and 256 keys: a lone decode step splits its keys (2 then 3 splits)


@pytest.fixture(scope="module")
def core(metal_core):
    return metal_core


@pytest.fixture
def schedule(core, request):
    """Runs the test under the emulator thread order given as the test's `order` parameter (on a
    Mac: the GPU's own order, whatever the parameter)."""
    order = request.node.callspec.params["order"]
    if sys.platform == "darwin":
        yield order
        return
    setter = getattr(core, "set_emulator_schedule", None)
    if setter is None:
        pytest.skip("this _core cannot switch the emulator's thread order")
    setter(order, 7) if order == "random" else setter(order)
    yield order
    setter("forward")


@pytest.fixture
def engine(forgert, core):
    def make(path, slots=4, n_ctx=N_CTX):
        return forgert.Model(str(path), backend="metal", n_ctx=n_ctx, parallel=slots)._engine
    return make


@pytest.fixture(scope="module")
def gemma2_file(tmp_path_factory):
    """Gemma 2 (gemma_factory): sliding-window layers of 8 keys, attention and final soft-capping,
    GeGLU, sandwich norms (matmul then add_rms_norm); Q8_0."""
    import gemma_factory as gf
    tm = gf.make_tiny_gemma(gf.SPECS["gemma2"], tmp_path_factory.mktemp("gemma2_inv"), hf_dtypes=(),
                            gguf_types=("Q8_0",))
    return tm.path("gguf-Q8_0"), tm.tokenizer.get_vocab_size()


def check_invariant(eng, vocab, chunk, lengths, late_len, prefill_first=False, steps=STEPS, admit_at=2):
    """Decoders of the given prompt lengths, and a late prompt of late_len tokens admitted at step
    admit_at and prefilled `chunk` tokens per step beside their decode rows: every sequence's tokens
    and logits equal the sequence alone."""
    prompts = [token_ids(vocab, n, i) for i, n in enumerate(lengths)]
    late_prompt = token_ids(vocab, late_len, seed=99)
    got = batched(eng, prompts, late_prompt, admit_at=admit_at, chunk=chunk, steps=steps, prefill_first=prefill_first)
    for i, (p, (toks, rows)) in enumerate(zip(prompts + [late_prompt], got)):
        ref_toks, ref_rows = alone(eng, p, steps=steps)
        assert toks == ref_toks, f"sequence {i} (prompt of {len(p)}), prefill chunk {chunk}: tokens differ"
        diff = np.abs(rows - ref_rows).max()
        assert np.array_equal(rows, ref_rows), f"sequence {i}, chunk {chunk}: logits differ by up to {diff}"


@pytest.mark.parametrize("kind, chunk, order", [
    ("llama-Q4_0", 5, "forward"),      # prefix chunks below the by-count GEMM threshold (8)
    ("llama-Q4_0", 20, "reverse"),     # a step of >= 8 rows: by count the decode rows took the GEMM
    ("llama-Q8_0", 20, "random"),
    ("llama-Q4_K_M", 9, "forward"),
])
def test_dense_decode_rows_alone_equal_batched_with_prefill(model_files, engine, tiny_tokenizer, schedule, kind,
                                                            chunk, order):
    check_invariant(engine(model_files(kind)), tiny_tokenizer.get_vocab_size(), chunk, lengths=(9, 3, 21),
                    late_len=44, prefill_first=chunk == 20)


@pytest.mark.parametrize("kind, chunk, order", [("mixtral-Q8_0", 17, "random"), ("mixtral-Q4_0", 5, "reverse")])
def test_moe_decode_rows_alone_equal_batched_with_prefill(model_files, engine, tiny_tokenizer, schedule, kind, chunk,
                                                          order):
    """matmul_id: a step's decode tokens take the per-slot GEMV, the prefill chunk's the grouped GEMM."""
    check_invariant(engine(model_files(kind)), tiny_tokenizer.get_vocab_size(), chunk, lengths=(9, 3, 21),
                    late_len=40, prefill_first=chunk == 5)


@pytest.mark.parametrize("order", ["forward", "random"])
def test_decode_rows_past_the_key_split(model_files, engine, tiny_tokenizer, schedule, order):
    """Contexts past 128 and 256 keys: a lone decode step cuts its keys into 2 or 3 splits, merged
    by attention_reduce; in a batch whose longest row has more keys (or fewer), each decode row
    takes the cut of its own key count, so its bits match."""
    eng = engine(model_files("llama-Q4_0"), n_ctx=LONG_CTX)
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk=48, lengths=(300, 140, 40), late_len=150, steps=4)


@pytest.mark.parametrize("order", ["reverse"])
def test_many_decode_rows(model_files, engine, tiny_tokenizer, schedule, order):
    """Nine decoding sequences and a prefill: by row count the decode-only steps (>= 8 rows) took
    the GEMM; by class every decode row takes the GEMV, bit-identical to its sequence alone."""
    eng = engine(model_files("llama-Q4_0"), slots=10)
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk=16, lengths=(9, 3, 21, 5, 13, 2, 7, 4, 11),
                    late_len=40, steps=4)


@pytest.mark.parametrize("order", ["forward"])
def test_decode_rows_in_several_token_groups(model_files, engine, tiny_tokenizer, schedule, order):
    """Seventeen decoding sequences of a model of mixed weight types (Q4_K_M: Q4_K and Q6_K
    matrices, F32 norms) beside a prefill: the multi-token GEMV (mul_mv_tokens.metal) takes 8 decode
    rows per threadgroup, so a step's 17 rows come in token groups of 8, 8 and 1, each row's bits
    still those of its sequence alone (a lone step takes the one-token kernel)."""
    eng = engine(model_files("llama-Q4_K_M"), slots=18)
    lengths = (9, 3, 21, 5, 13, 2, 7, 4, 11, 6, 8, 10, 12, 14, 15, 16, 17)
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk=16, lengths=lengths, late_len=40, steps=3)


@pytest.mark.parametrize("order", ["random"])
def test_direct_gemv_kernels(model_files, engine, tiny_tokenizer, schedule, order, monkeypatch):
    """FORGERT_METAL_GEMV=direct (mul_mv.metal's kernels instead of the staged ones): the same
    bit-identity."""
    monkeypatch.setenv("FORGERT_METAL_GEMV", "direct")
    check_invariant(engine(model_files("llama-Q4_K_M")), tiny_tokenizer.get_vocab_size(), chunk=20,
                    lengths=(9, 3, 21), late_len=44)


@pytest.mark.parametrize("order", ["forward"])
def test_sliding_window_and_softcaps(gemma2_file, engine, schedule, order):
    """Gemma 2: decode rows' windowed attention (8 keys) and prefix rows' windowed prefill
    kernel, soft-capped scores and logits, the fused GeGLU and the sandwich norms."""
    path, vocab = gemma2_file
    check_invariant(engine(path), vocab, chunk=20, lengths=(9, 3, 21), late_len=44, prefill_first=True)


@pytest.mark.parametrize("order", ["reverse"])
def test_cached_prompt_prefix_gives_the_cold_bits(model_files, engine, tiny_tokenizer, schedule, order):
    """A prompt whose first 30 tokens are already in the slot (prefix rows of an earlier prompt)
    decodes to the bits of a cold prefill: prefix rows' K/V do not depend on the chunks they came in."""
    eng = engine(model_files("llama-Q4_0"))
    vocab = tiny_tokenizer.get_vocab_size()
    system, first, second = token_ids(vocab, 30, 1), token_ids(vocab, 9, 2), token_ids(vocab, 11, 3)
    cold = alone(eng, system + second, steps=STEPS)
    alone(eng, system + first, steps=2)
    toks, logits = alone(eng, system + second, steps=STEPS, cached=len(system))
    assert toks == cold[0]
    assert np.array_equal(logits, cold[1])
