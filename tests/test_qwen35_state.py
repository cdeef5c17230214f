"""A recurrent model's state (the Gated DeltaNet layers of Qwen3.5 and Qwen3-Next hold a fixed-size
state per sequence, not K/V rows): it continues only from where it stands, so every path that
resumes a sequence (a follow-up prompt, saved states, the prompt cache, batched slots, one
prompt's n choices) must resume there or start again. Each check runs on both models' GGUFs and
compares with the same tokens evaluated fresh (a new Model), which the models' own tests
(test_arch_qwen35.py, test_arch_qwen3next.py) tie to transformers.
"""
from __future__ import annotations

import numpy as np
import pytest

import qwen35_factory as qf
import qwen3next_factory as q3n
from conftest import backend_params, require_backend

models = qf.models_fixture()


def ids(n, seed, vocab=320):
    return [int(t) for t in np.random.default_rng(seed).integers(2, vocab, n)]


@pytest.fixture(scope="module")
def qwen35_path(models):
    return str(models("qwen35")[1]["gguf-F32"])


@pytest.fixture(scope="module")
def qwen3next_path(tmp_path_factory, tiny_tokenizer):
    """Qwen3-Next's Q8_0 GGUF (two key heads of four value heads, every layer routed)."""
    root = tmp_path_factory.mktemp("qwen3next_state")
    model = q3n.build("qwen3next", tiny_tokenizer.get_vocab_size())
    hf_dir = q3n.save_hf(model, tiny_tokenizer, root / "hf")
    return str(q3n.write_gguf(hf_dir, root / "m.gguf", "Q8_0", "qwen3next", model.config, tiny_tokenizer))


@pytest.fixture(scope="module", params=["qwen35", "qwen3next"])
def path(request):
    return request.getfixturevalue(f"{request.param}_path")


def fresh_greedy(forgert, path, prompt, n=8, backend="cpu"):
    return list(forgert.Model(path, backend=backend, n_ctx=256).generate(prompt, max_tokens=n, temperature=0.0,
                                                                         ignore_eos=True).tokens)


def test_engine_refuses_to_continue_from_another_position(forgert, path):
    eng = forgert.Model(path, backend="cpu", n_ctx=256)._engine
    assert eng.recurrent and eng.state_position(0) == -1
    eng.forward(np.array(ids(10, 1), np.int32), 0)
    assert eng.state_position(0) == 10
    with pytest.raises(ValueError, match="cannot continue from position 7"):
        eng.forward(np.array(ids(3, 2), np.int32), 7)
    with pytest.raises(ValueError, match="cannot continue from position 11"):
        eng.forward(np.array(ids(1, 2), np.int32), 11)
    assert eng.state_position(0) == 10   # a refused pass leaves the state as it was
    eng.forward(np.array(ids(2, 3), np.int32), 10)
    assert eng.state_position(0) == 12
    eng.forward(np.array(ids(4, 4), np.int32), 0)   # position 0 always starts again
    assert eng.state_position(0) == 4


@pytest.mark.parametrize("backend", backend_params())
def test_follow_up_prompt_resumes_and_equals_fresh(forgert, path, metal_reason, backend):
    """Also the pipelined decode (Metal encodes each step before the last is read back; its
    recurrent layers take a fixed run table then)."""
    require_backend(backend, metal_reason)
    m = forgert.Model(path, backend=backend, n_ctx=256)
    first = ids(20, 5)
    c1 = m.generate(first, max_tokens=6, temperature=0.0, ignore_eos=True)
    follow = first + list(c1.tokens) + ids(7, 6)
    c2 = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    # the state holds the prompt and all generated tokens but the last (never evaluated)
    assert c2.timings.cached_tokens == len(first) + len(c1.tokens) - 1
    assert list(c2.tokens) == fresh_greedy(forgert, path, follow, backend=backend)


def test_prompt_sharing_a_shorter_prefix_starts_again(forgert, path):
    """Prompts sharing only part of the evaluated sequence: the state cannot rewind to their
    shared prefix, so the whole prompt is evaluated (and the result equals a fresh one)."""
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    base = ids(16, 7)
    m.generate(base + ids(8, 8), max_tokens=4, temperature=0.0, ignore_eos=True)
    other = base + ids(8, 9)
    c = m.generate(other, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c.timings.cached_tokens == 0
    assert list(c.tokens) == fresh_greedy(forgert, path, other)


def test_saved_state_round_trip(forgert, path):
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    a = ids(24, 10)
    m.generate(a, max_tokens=1, temperature=0.0, ignore_eos=True)
    state = m.save_state()
    assert state.recurrent is not None and state.recurrent.dtype == np.float32 and len(state.tokens) == len(a)
    m.generate(ids(30, 11), max_tokens=4, temperature=0.0, ignore_eos=True)   # another sequence overwrites it
    m.load_state(state)
    follow = a + ids(5, 12)
    c = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c.timings.cached_tokens == len(a)
    assert list(c.tokens) == fresh_greedy(forgert, path, follow)


def test_state_of_another_kind_refused(forgert, path, tiny_models):
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    m.generate(ids(4, 13), max_tokens=1, temperature=0.0, ignore_eos=True)
    state = m.save_state()
    from forgert.prompt_cache import ModelState
    with pytest.raises(ValueError, match="recurrent states missing"):
        m.load_state(ModelState(state.tokens, state.kv))
    with pytest.raises(ValueError, match="must be f32"):
        m._engine.state_load(np.zeros(3, np.float32), 4)


def test_prompt_cache_alternating_conversations(forgert, path):
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    m.set_prompt_cache(64 << 20)
    a, b = ids(20, 14), ids(22, 15)
    ca = m.generate(a, max_tokens=5, temperature=0.0, ignore_eos=True)
    m.generate(b, max_tokens=5, temperature=0.0, ignore_eos=True)
    follow = a + list(ca.tokens) + ids(4, 16)     # conversation a's next turn, after b's
    c = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c.timings.cached_tokens == len(a) + len(ca.tokens) - 1   # a's saved state, where it stood
    assert list(c.tokens) == fresh_greedy(forgert, path, follow)


@pytest.mark.parametrize("backend", backend_params())
def test_batch_equals_one_by_one(forgert, path, metal_reason, backend):
    """Several prompts in one batch (each its own slot and state), the same prompt twice (its
    second copy follows the first's prefill), and a second batch whose prompts extend the first's."""
    require_backend(backend, metal_reason)
    prompts = [ids(12, 17), ids(30, 18), ids(12, 17), ids(5, 19)]
    m = forgert.Model(path, backend=backend, n_ctx=256, parallel=3)
    got = m.generate(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)
    for p, c in zip(prompts, got):
        assert list(c.tokens) == fresh_greedy(forgert, path, p, backend=backend)
    again = [p + list(c.tokens) + ids(3, 20 + i) for i, (p, c) in enumerate(zip(prompts, got))]
    for p, c in zip(again, m.generate(again, max_tokens=8, temperature=0.0, ignore_eos=True)):
        assert list(c.tokens) == fresh_greedy(forgert, path, p, backend=backend)


def test_n_choices_share_the_prompt(forgert, path):
    """n > 1 choices of one prompt: the followers copy the leader's state once it has prefilled the
    prefix, or prefill it themselves when it has moved past; every choice as if alone."""
    m = forgert.Model(path, backend="cpu", n_ctx=256, parallel=4)
    p = ids(40, 21)
    got = m.generate([p] * 4, max_tokens=6, temperature=0.0, ignore_eos=True)
    want = fresh_greedy(forgert, path, p, 6)
    assert all(list(c.tokens) == want for c in got)


def test_memory_check_counts_attention_rows_and_states(forgert, qwen35_path, monkeypatch):
    """The up-front memory check counts K/V rows of the attention layers only (1 of the 4) and the
    recurrent states of the others, by hand: K/V 1 layer x 2 x 4096 positions x (2 heads x 32) x 2
    bytes = 1048576; states 3 layers x 4 bytes x (3 past inputs x 256 channels + 4 heads x 32 x 32)
    = 58368, three times over (the live one and two checkpoints, state_checkpoints.py). One byte
    short of their sum is refused, naming the n_ctx that fits; the sum is accepted."""
    import forgert.model as fm
    need = 1 * 2 * 4096 * 64 * 2 + 3 * 3 * 4 * (3 * 256 + 4 * 32 * 32)
    monkeypatch.setattr(fm, "available_memory_bytes", lambda: need - 1)
    with pytest.raises(ValueError, match=r"n_ctx=4096 needs a .* pass n_ctx <= 4095"):
        forgert.Model(qwen35_path, backend="cpu", n_ctx=4096)
    monkeypatch.setattr(fm, "available_memory_bytes", lambda: need)
    assert forgert.Model(qwen35_path, backend="cpu", n_ctx=4096).n_ctx == 4096


def test_info_reports_cache_per_token_and_state(forgert, qwen35_path):
    """forgert info and Model.info(): K/V bytes per token (the one attention layer's: 2 x 64 x 2)
    and the states per sequence (58368, as above)."""
    import subprocess
    import sys
    from conftest import subprocess_env
    info = forgert.Model(qwen35_path, backend="cpu", n_ctx=64).info()
    assert info["kv_bytes_per_token"] == 256 and info["state_bytes_per_sequence"] == 58368
    out = subprocess.run([sys.executable, "-m", "forgert", "info", qwen35_path], capture_output=True, text=True,
                         env=subprocess_env(), check=True).stdout
    assert "256 B of K/V per token + 57.0 KiB of recurrent state per sequence" in out
