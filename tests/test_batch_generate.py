"""Model.generate / Model.stream with a list of prompts: one batch, `parallel` sequences decoded
together (python/forgert/batch.py over _core.Engine.forward_batch*).

References: each prompt generated alone by a one-slot Model (the path test_e2e_tiny.py checks),
and transformers' logits teacher-forced on the batch's own output (each greedy token must be the
reference's argmax up to near-ties within test_e2e_tiny.py's F32 bound, 5e-4 of max|logit|).
Prompts are skewed: one long (40 tokens), one of a single token, more prompts than slots (a
finished sequence's slot is reused), so admissions happen while others decode.
"""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from forgert.sampling import SamplingParams

FMT = "gguf-F32"
REF_MAX_REL = 5e-4   # test_e2e_tiny.py's F32 bound (measured there <= 1.3e-4)


def token_ids(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


def skewed_prompts(vocab):
    return [token_ids(vocab, n, seed) for seed, n in enumerate([40, 1, 5, 12, 3])]


@pytest.fixture
def load(forgert):
    def make(tm, **kw):
        return forgert.Model(str(tm.path(FMT)), backend="cpu", threads=1, n_ctx=96, **kw)
    return make


@pytest.mark.parametrize("name", ["llama3_untied", "qwen2_tied"])
def test_greedy_batch_equals_each_prompt_alone(tiny_models, load, name):
    tm = tiny_models(name)
    prompts = skewed_prompts(tm.vocab)
    batch = load(tm, parallel=3).generate(prompts, max_tokens=10, temperature=0.0, ignore_eos=True)
    single = load(tm)
    alone = [single.generate(p, max_tokens=10, temperature=0.0, ignore_eos=True) for p in prompts]
    assert [c.tokens for c in batch] == [c.tokens for c in alone]
    assert [c.text for c in batch] == [c.text for c in alone]
    assert all(c.finish_reason == "length" and c.usage.completion_tokens == 10 for c in batch)


@pytest.mark.parametrize("name", ["llama_tied", "qwen2_untied"])
def test_greedy_batch_follows_transformers(tiny_models, reference_models, load, name):
    tm = tiny_models(name)
    prompts = skewed_prompts(tm.vocab)
    batch = load(tm, parallel=4).generate(prompts, max_tokens=12, temperature=0.0, ignore_eos=True)
    ref_model = reference_models(name, FMT)
    for prompt, c in zip(prompts, batch):
        ref = mf.reference_logits(ref_model, prompt + c.tokens)   # teacher-forced
        tol = REF_MAX_REL * np.abs(ref).max()
        for k, t in enumerate(c.tokens):
            row = ref[len(prompt) - 1 + k]
            assert row[t] >= row.max() - tol, f"{name}: prompt of {len(prompt)}, step {k} chose {t}"


def test_per_sequence_params_and_seeds(tiny_models, load):
    """Each prompt its own SamplingParams (greedy, seeded samples, a stop token budget): the
    same completions as each alone with its params."""
    tm = tiny_models("llama_tied")
    prompts = skewed_prompts(tm.vocab)[:4]
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=0.8, top_p=0.9, seed=6, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=1.2, seed=7, repetition_penalty=1.3, max_tokens=7, ignore_eos=True)]
    batch = load(tm, parallel=4).generate(prompts, params)
    single = load(tm)
    for p, sp, c in zip(prompts, params, batch):
        assert c.tokens == single.generate(p, sp).tokens
    assert [len(c.tokens) for c in batch] == [6, 9, 4, 7]


def test_stream_yields_indexed_pieces(tiny_models, load, tiny_tokenizer):
    tm = tiny_models("qwen2_tied")
    prompts = ["hello world", "a b c", "the end"]
    s = load(tm, parallel=2).stream(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)
    texts = ["", "", ""]
    for i, piece in s:
        texts[i] += piece
    assert texts == [c.text for c in s.completion]
    single = load(tm)
    assert [c.text for c in s.completion] == [single.generate(p, max_tokens=8, temperature=0.0, ignore_eos=True).text
                                             for p in prompts]


def test_single_prompt_path_still_works_after_a_batch(tiny_models, load):
    """The batch overwrites slot 0; the next single generation must not reuse a stale prefix."""
    tm = tiny_models("llama_tied")
    prompts = skewed_prompts(tm.vocab)
    m = load(tm, parallel=2)
    first = m.generate(prompts[0], max_tokens=5, temperature=0.0, ignore_eos=True)
    m.generate(prompts[1:], max_tokens=5, temperature=0.0, ignore_eos=True)
    again = m.generate(prompts[0], max_tokens=5, temperature=0.0, ignore_eos=True)
    assert again.tokens == first.tokens


def test_bad_batch_arguments(tiny_models, load):
    tm = tiny_models("llama_tied")
    m = load(tm, parallel=2)
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        m.generate([[1], [2], [3]], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="not supported with a list of prompts"):
        m.stream([[1], [2]], logprobs=2)
    with pytest.raises(ValueError, match="prompt is empty"):
        m.generate([[1], []])
    with pytest.raises(ValueError, match="parallel"):
        load(tm, parallel=0)


def test_scheduler_cancel_frees_the_slot_for_the_next(tiny_models, load):
    """A sequence cancelled mid-batch (its client left): the others' output is unchanged and
    the queued prompt takes its slot."""
    from forgert.batch import BatchScheduler
    tm = tiny_models("llama3_untied")
    prompts = skewed_prompts(tm.vocab)[:3]
    m = load(tm, parallel=2)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    sched = BatchScheduler(m._engine, m.tokenizer, prefill_chunk=16)
    seqs = [sched.add(p, greedy) for p in prompts]
    for _ in range(3):
        sched.step()
    assert seqs[2].slot == -1 and not seqs[2].done      # queued: both slots taken
    sched.cancel(seqs[0])
    while sched.busy:
        sched.step()
    assert seqs[0].result is None and seqs[0].done
    single = load(tm)
    for p, s in zip(prompts[1:], seqs[1:]):
        assert s.result.tokens == single.generate(p, greedy).tokens


def test_a_slot_keeps_its_prefix_for_the_next_turn(tiny_models, load):
    """A conversation's next turn (its previous prompt + answer + more) is admitted into the slot
    that holds its history and prefills only the new tokens; its output equals the turn run
    alone from scratch."""
    from forgert.batch import BatchScheduler
    tm = tiny_models("qwen2_untied")
    first, other = skewed_prompts(tm.vocab)[2:4]
    m = load(tm, parallel=2)
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    sched = BatchScheduler(m._engine, m.tokenizer, prefill_chunk=16)
    a, b = sched.add(first, greedy), sched.add(other, greedy)
    while sched.busy:
        sched.step()
    turn = first + a.result.tokens + token_ids(tm.vocab, 6, 99)
    c = sched.add(turn, greedy)
    while sched.busy:
        sched.step()
    assert c.slot == a.slot
    # The history in the slot: the prompt and the answer tokens that were evaluated (the last
    # one sampled never was).
    assert c.result.timings.cached_tokens == len(first) + len(a.result.tokens) - 1
    assert c.result.tokens == load(tm).generate(turn, greedy).tokens
