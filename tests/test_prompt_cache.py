"""Saved K/V states (Model.save_state / load_state) and the multi-sequence prompt cache
(Model.set_prompt_cache). References: the same prompt evaluated from an empty cache by a fresh
model (what a restored state must reproduce exactly), and hand-worked LRU cases."""
from __future__ import annotations

import numpy as np
import pytest

from forgert.prompt_cache import ModelState, PromptCache


def state(tokens, nbytes):
    return ModelState(tuple(tokens), np.zeros(nbytes, np.uint8))


# ----------------------------------------------------------------------------- PromptCache

def test_best_is_the_longest_shared_prefix():
    c = PromptCache(1000)
    c.put(state([1, 2, 3, 4], 10))
    c.put(state([1, 2, 9], 10))
    c.put(state([7, 8], 10))
    best, n = c.best([1, 2, 3, 5, 6])
    assert best.tokens == (1, 2, 3, 4) and n == 3
    assert c.best([5]) == (None, 0)


def test_least_recently_used_goes_first_within_the_budget():
    c = PromptCache(25)
    c.put(state([1], 10))
    c.put(state([2], 10))
    c.put(state([3], 10))           # 30 bytes > 25: [1] goes
    assert c.best([1]) == (None, 0) and c.nbytes == 20 and len(c) == 2
    c.take(c.best([2])[0])          # [2] becomes live: out of the cache
    assert c.best([2]) == (None, 0) and c.nbytes == 10
    c.put(state([4], 30))           # larger than the whole budget: not kept
    assert len(c) == 1


def test_a_longer_sequence_replaces_its_saved_prefixes():
    c = PromptCache(1000)
    c.put(state([1, 2], 10))
    c.put(state([1, 2, 3], 10))
    assert len(c) == 1 and c.nbytes == 10


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_budget(bad):
    with pytest.raises(ValueError):
        PromptCache(bad)


# ----------------------------------------------------------------------------- Model states

@pytest.fixture(scope="module")
def tiny_gguf(tiny_models):
    return tiny_models("llama_tied").path("gguf-Q8_0")


BACKENDS = ["cpu", pytest.param("metal", marks=pytest.mark.metal)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_restored_state_continues_exactly(forgert, tiny_gguf, backend):
    from conftest import metal_skip_reason
    if backend == "metal" and metal_skip_reason():
        pytest.skip(metal_skip_reason())
    prompt = list(range(3, 40))
    other = list(range(100, 130))
    m = forgert.Model(str(tiny_gguf), backend=backend, n_ctx=128)
    m.generate(prompt, max_tokens=1, temperature=0)   # prompt's K/V now cached
    saved = m.save_state()
    assert saved.tokens[:len(prompt)] == tuple(prompt)
    m.generate(other, max_tokens=1, temperature=0)    # overwrites the cache
    m.load_state(saved)
    # The restored cache serves the prompt's continuation: only the new token is evaluated,
    # and the logits equal those of a fresh model evaluating it all from position 0.
    nxt = list(saved.tokens) + [7]
    got = m.generate(nxt, max_tokens=3, temperature=0)
    assert got.timings.cached_tokens == len(saved.tokens)
    fresh = forgert.Model(str(tiny_gguf), backend=backend, n_ctx=128).generate(nxt, max_tokens=3, temperature=0)
    assert got.tokens == fresh.tokens


def test_load_state_checks_its_input(forgert, tiny_gguf, tiny_models):
    m = forgert.Model(str(tiny_gguf), backend="cpu", n_ctx=64)
    m.generate(list(range(3, 20)), max_tokens=1, temperature=0)
    s = m.save_state()
    with pytest.raises(TypeError):
        m.load_state(s.kv)
    with pytest.raises(ValueError):   # rows and tokens disagree
        m.load_state(ModelState(s.tokens[:-1], s.kv))
    other = forgert.Model(str(tiny_models("llama3_untied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)
    with pytest.raises(ValueError, match="this state was saved by another model"):   # another model's geometry
        other.load_state(s)
    small = forgert.Model(str(tiny_gguf), backend="cpu", n_ctx=8)
    with pytest.raises(ValueError, match="kv state must be"):   # longer than this context
        small.load_state(s)
    # a K/V array of another type was cast to uint16 values, and token ids outside the vocabulary
    # were taken: both loaded silently
    with pytest.raises(ValueError, match="uint16 array .float16 bits., got float32"):
        m.load_state(ModelState(s.tokens, s.kv.astype(np.float32)))
    with pytest.raises(ValueError, match=r"state's tokens are not all token ids of this model \(0\.\.319\)"):
        m.load_state(ModelState((9999,) * len(s.tokens), s.kv))


def test_alternating_prompts_keep_their_prefixes(forgert, tiny_gguf):
    a = list(range(3, 83))       # two conversations taking turns
    b = list(range(90, 170))
    m = forgert.Model(str(tiny_gguf), backend="cpu", n_ctx=256)
    m.set_prompt_cache(16 << 20)
    first_a = m.generate(a, max_tokens=4, temperature=0)
    first_b = m.generate(b, max_tokens=4, temperature=0)
    again_a = m.generate(a, max_tokens=4, temperature=0)
    again_b = m.generate(b, max_tokens=4, temperature=0)
    assert first_b.timings.cached_tokens == 0
    assert again_a.timings.cached_tokens == len(a) - 1 and again_b.timings.cached_tokens == len(b) - 1
    assert again_a.tokens == first_a.tokens and again_b.tokens == first_b.tokens
    # without the cache each turn starts over
    plain = forgert.Model(str(tiny_gguf), backend="cpu", n_ctx=256)
    for p in (a, b, a):
        r = plain.generate(p, max_tokens=4, temperature=0)
    assert r.timings.cached_tokens == 0 and r.tokens == first_a.tokens
    m.reset()   # forgets the saved sequences too
    assert m.generate(b, max_tokens=1, temperature=0).timings.cached_tokens == 0
