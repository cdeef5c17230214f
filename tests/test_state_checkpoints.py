"""Checkpoints of a recurrent model's states (state_checkpoints.py): a prompt of 64+ tokens saves
its slot's state 16 tokens before its end, so a next prompt that shares that much (a chat's next
turn, whose template re-renders the end of the last one; the same prompt again) continues from
there instead of from position 0. Each check counts the tokens skipped (Timings.cached_tokens,
by hand) and compares the tokens with the same prompt evaluated fresh (a new Model), which the
models' own tests tie to transformers.
"""
from __future__ import annotations

import numpy as np
import pytest

import lfm2_factory as lf
import mamba2_factory as mf2
import qwen35_factory as qf
from conftest import backend_params, require_backend
from forgert.sampling import SamplingParams

models = qf.models_fixture()
lfm2_models = lf.models_fixture()
granite_models = mf2.models_fixture()
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def ids(n, seed, vocab=320):
    return [int(t) for t in np.random.default_rng(seed).integers(2, vocab, n)]


@pytest.fixture(scope="module")
def path(models):
    return str(models("qwen35")[1]["gguf-F32"])


def fresh(forgert, path, prompt, backend="cpu"):
    return list(forgert.Model(path, backend=backend, n_ctx=256).generate(prompt, GREEDY).tokens)


def next_turn(prompt, answer, seed):
    """A chat's next turn: the prompt but its last 3 tokens (the generation prompt, rendered
    differently once answered), an answer, a new message."""
    return prompt[:-3] + list(answer) + ids(12, seed)


@pytest.mark.parametrize("backend", backend_params())
def test_next_turn_resumes_at_the_checkpoint(forgert, path, metal_reason, backend):
    require_backend(backend, metal_reason)
    m = forgert.Model(path, backend=backend, n_ctx=256)
    first = ids(80, 1)
    c1 = m.generate(first, GREEDY)
    turn = next_turn(first, c1.tokens, 2)
    c2 = m.generate(turn, GREEDY)
    assert c2.timings.cached_tokens == 80 - 1 - 16      # the checkpoint: 16 before the prefix's end
    assert list(c2.tokens) == fresh(forgert, path, turn, backend)


def test_the_same_prompt_again_resumes_at_the_checkpoint(forgert, path):
    """A retried prompt (regenerate): its state went on past the prompt, its checkpoint did not."""
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    p = ids(70, 3)
    a = m.generate(p, GREEDY)
    b = m.generate(p, GREEDY)
    assert b.timings.cached_tokens == 70 - 1 - 16
    assert list(a.tokens) == list(b.tokens) == fresh(forgert, path, p)


def test_short_prompts_and_other_prefixes_start_again(forgert, path):
    """Under 64 tokens no checkpoint is taken; a prompt diverging before the checkpoint cannot use it."""
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    short = ids(40, 4)
    m.generate(short, GREEDY)
    assert m.generate(short[:-2] + ids(5, 5), GREEDY).timings.cached_tokens == 0
    long = ids(90, 6)
    m.generate(long, GREEDY)
    early = long[:60] + ids(10, 7)     # diverges at 60, before the checkpoint at 73
    c = m.generate(early, GREEDY)
    assert c.timings.cached_tokens == 0
    assert list(c.tokens) == fresh(forgert, path, early)
    assert len(m._checkpoints) == 2 and m._checkpoints.nbytes == 2 * m._engine.state_save().nbytes


def test_alternating_conversations_keep_their_checkpoints(forgert, path):
    """Three conversations taking turns through the prompt cache (more than the two checkpoints a
    slot keeps): each saved sequence carries its checkpoints, so each next turn loads its K/V rows
    and continues from its own checkpoint."""
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    m.set_prompt_cache(64 << 20)
    prompts = [ids(70, 8), ids(75, 9), ids(66, 10)]
    answers = [m.generate(p, GREEDY).tokens for p in prompts]
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        turn = next_turn(prompt, answer, 20 + i)
        c = m.generate(turn, GREEDY)
        assert c.timings.cached_tokens == len(prompt) - 1 - 16
        assert list(c.tokens) == fresh(forgert, path, turn)


def test_saved_state_carries_its_checkpoints(forgert, path):
    """save_state / load_state: a sequence saved after its answer resumes a next turn at its
    checkpoint in another Model of the same file; checkpoints that do not belong to the state's
    tokens are refused."""
    from dataclasses import replace
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    p = ids(80, 30)
    answer = m.generate(p, GREEDY).tokens
    m.generate(p + list(answer), SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    state = m.save_state()   # (that prompt continued the state: it took no checkpoint of its own)
    assert [len(c.tokens) for c in state.checkpoints] == [80 - 1 - 16]
    other = forgert.Model(path, backend="cpu", n_ctx=256)
    other.load_state(state)
    turn = next_turn(p, answer, 31)
    c = other.generate(turn, GREEDY)
    assert c.timings.cached_tokens == 80 - 1 - 16
    assert list(c.tokens) == fresh(forgert, path, turn)
    foreign = replace(state.checkpoints[0], tokens=tuple(ids(63, 32)))
    with pytest.raises(ValueError, match="checkpoints do not match"):
        other.load_state(replace(state, checkpoints=(foreign,)))


@pytest.mark.parametrize("backend", backend_params())
def test_batch_slots_resume_at_their_checkpoints(forgert, path, metal_reason, backend):
    """The server's scheduler: each slot saves its prompt's checkpoint while the prompt is
    prefilled in chunks beside the other rows; the next turns are admitted into the slots holding
    their history and continue from there."""
    require_backend(backend, metal_reason)
    from forgert.batch import BatchScheduler
    m = forgert.Model(path, backend=backend, n_ctx=256, parallel=2)
    sched = BatchScheduler(m._engine, m.tokenizer, prefill_chunk=32)
    prompts = [ids(100, 12), ids(66, 13)]
    first = [sched.add(p, GREEDY) for p in prompts]
    while sched.busy:
        sched.step()
    turns = [next_turn(p, s.result.tokens, 14 + i) for i, (p, s) in enumerate(zip(prompts, first))]
    second = [sched.add(t, GREEDY) for t in turns]
    while sched.busy:
        sched.step()
    for p, t, s1, s2 in zip(prompts, turns, first, second):
        assert s2.slot == s1.slot
        assert s2.result.timings.cached_tokens == len(p) - 1 - 16
        assert list(s2.result.tokens) == fresh(forgert, path, t, backend)


@pytest.mark.parametrize("kind", ["lfm2", "granite4h-dense"])
def test_other_recurrent_kinds(forgert, lfm2_models, granite_models, kind):
    """LFM2's convolution states and Granite 4.0-H's Mamba2 states resume from a checkpoint the same way."""
    p = str((lfm2_models if kind == "lfm2" else granite_models)(kind)[1]["gguf-F32"])
    m = forgert.Model(p, backend="cpu", n_ctx=256)
    first = ids(72, 15)
    c1 = m.generate(first, GREEDY)
    turn = next_turn(first, c1.tokens, 16)
    c2 = m.generate(turn, GREEDY)
    assert c2.timings.cached_tokens == 72 - 1 - 16
    assert list(c2.tokens) == fresh(forgert, p, turn)


def test_engine_state_of_any_slot(forgert, path):
    """Engine.state_save / state_load take a slot: one slot's state into another's, checked."""
    eng = forgert.Model(path, backend="cpu", n_ctx=256, parallel=2)._engine
    eng.forward(np.array(ids(10, 17), np.int32), 0)
    with pytest.raises(ValueError, match="slot 1 holds no valid recurrent state"):
        eng.state_save(1)
    with pytest.raises(ValueError, match="slot 2 is outside 0..1"):
        eng.state_save(2)
    s0 = eng.state_save(0)
    eng.state_load(s0, 10, 1)
    assert eng.state_position(1) == 10 and np.array_equal(eng.state_save(1), s0)


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}])
@pytest.mark.parametrize("style", ["QWEN3_STYLE", "SMOLLM3_STYLE"])
def test_a_chat_turn_shares_the_last_prompt_up_to_its_checkpoint(style, kwargs):
    """The 16 tokens are enough for real templates: a conversation's next prompt, rendered by a
    Qwen3-style template (which drops the answer's thinking) or SmolLM3's and tokenized, shares the
    last prompt but for its last few tokens (the generation prompt: 0 or 6 tokens here, measured)."""
    import chat_templates
    import model_factory as mf
    from forgert.chat import ChatTemplate
    from forgert.prompt_cache import common_prefix
    from forgert.state_checkpoints import CHECKPOINT_TAIL
    tok = mf.build_tokenizer()
    tok.add_special_tokens(chat_templates.CHAT_SPECIAL_TOKENS)
    template = ChatTemplate(getattr(chat_templates, style))
    talk = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime number larger than ten, and explain why it is prime."}]
    answer = "<think>\nThirteen has no divisors but one and itself.\n</think>\n\nThirteen."
    first = tok.encode(template.render(talk, **kwargs)).ids
    nxt = tok.encode(template.render(talk + [{"role": "assistant", "content": answer},
                                             {"role": "user", "content": "Another?"}], **kwargs)).ids
    gap = len(first) - common_prefix(first, nxt)
    assert gap < CHECKPOINT_TAIL, (style, kwargs, gap)
