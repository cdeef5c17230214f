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
from test_e2e_tiny import assert_follows_reference

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
        assert_follows_reference(ref, len(prompt), c.tokens, REF_MAX_REL * np.abs(ref).max(),
                                 f"{name}: prompt of {len(prompt)}")


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


def _run(sched):
    while sched.busy:
        sched.step()


def test_python_rows_leave_the_other_rows_unchanged(tiny_models, load):
    """A sequence with logprobs makes the step return every row's logits; the plain rows beside
    it (greedy, seeded samples) are then drawn from those logits on the host and must equal the
    same rows drawn in the engine (a batch without it); its own logprobs equal the single path's."""
    from forgert.batch import BatchScheduler, LogitsOptions
    tm = tiny_models("llama_tied")
    prompts = skewed_prompts(tm.vocab)[:4]
    params = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=1.2, seed=7, repetition_penalty=1.3, max_tokens=8, ignore_eos=True)]
    m = load(tm, parallel=4)
    plain = m.generate(prompts[:3], params)
    sched = BatchScheduler(m._engine, m.tokenizer, prefill_chunk=16)
    seqs = [sched.add(p, sp) for p, sp in zip(prompts[:3], params)]
    with_lp = sched.add(prompts[3], params[0], LogitsOptions(top_logprobs=2))
    got_lp = []
    while sched.busy:
        got_lp += [lp for out in sched.step() if out.sequence is with_lp for lp in out.logprobs or ()]
    assert [s.result.tokens for s in seqs] == [c.tokens for c in plain]
    alone = load(tm).stream(prompts[3], params[0], logprobs=2)
    want_lp = [lp for piece in alone for lp in piece.logprobs]
    assert with_lp.result.tokens == alone.completion.tokens
    assert [lp.token for lp in got_lp] == [lp.token for lp in want_lp]
    # batched pass vs one-row pass, f32: measured 2.3e-7
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got_lp, want_lp)) < 1e-5


class _FailingGrammar:
    """A stand-in Grammar whose matcher allows every token and refuses the third it is given."""

    class _Matcher:
        done = False

        def __init__(self, vocab):
            self.vocab, self.n = vocab, 0

        def mask(self):
            return np.ones(self.vocab, bool)

        def apply(self, logits, allowed=None):
            return np.asarray(logits, np.float32)

        def accept(self, tok):
            self.n += 1
            if self.n == 3:
                raise RuntimeError(f"the grammar refused token {tok}")

    def __init__(self, vocab):
        self.vocab = vocab

    def matcher(self):
        return self._Matcher(self.vocab)


def test_a_failing_grammar_ends_its_sequence_alone(tiny_models, load):
    from forgert.batch import BatchScheduler, LogitsOptions
    tm = tiny_models("llama3_untied")
    prompts = skewed_prompts(tm.vocab)[:3]
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    m = load(tm, parallel=3)
    sched = BatchScheduler(m._engine, m.tokenizer, prefill_chunk=16)
    bad = sched.add(prompts[0], greedy, LogitsOptions(grammar=_FailingGrammar(m.vocab_size)))
    others = [sched.add(p, greedy) for p in prompts[1:]]
    _run(sched)
    assert isinstance(bad.error, RuntimeError) and "refused token" in str(bad.error)
    assert bad.done and len(bad.result.tokens) == 3 and len(sched.free_slots) == 3
    single = load(tm)
    assert [s.result.tokens for s in others] == [single.generate(p, greedy).tokens for p in prompts[1:]]
