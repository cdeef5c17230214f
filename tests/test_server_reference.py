"""The server's answers against transformers (tests/smollm2_reference.py), not against forgert's
own Python API: greedy completion and chat text decoded by transformers' tokenizer, a follow-up
turn served from the cached conversation, streamed text, log-probabilities, and clients
served concurrently."""
from __future__ import annotations

import numpy as np
import pytest

from smollm2_server_fixtures import client, model, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# Prompts whose reference greedy steps are all clear choices (smollm2_reference.MIN_GAP);
# USER's answer ends with <|im_end|> after 8 tokens ("A week is approximately 7 days.").
USER = [{"role": "user", "content": "How many days are in a week?"}]


@pytest.fixture(scope="module")
def hf(smollm2_reference):
    return smollm2_reference


RAW_PROMPTS = ["The largest ocean on Earth is the", "One, two, three, four,"]


@pytest.mark.parametrize("prompt", RAW_PROMPTS)
def test_completion_is_the_transformers_greedy_text(client, hf, prompt):
    tokens, finish = hf.greedy(hf.text_ids(prompt), 8, stop_at_end_of_turn=False)
    resp = client.completions.create(model="x", prompt=prompt, max_tokens=8, temperature=0)
    assert resp.choices[0].text == hf.text(tokens)
    assert resp.choices[0].finish_reason == finish == "length"


def test_chat_is_the_transformers_greedy_text(client, hf):
    tokens, finish = hf.greedy(hf.chat_ids(USER), 12)
    resp = client.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0)
    assert resp.choices[0].message.content == hf.text(tokens)
    assert resp.choices[0].finish_reason == finish
    assert resp.usage.prompt_tokens == len(hf.chat_ids(USER))


def test_streamed_chat_is_the_transformers_greedy_text(client, hf):
    tokens, _ = hf.greedy(hf.chat_ids(USER), 12)
    chunks = client.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == hf.text(tokens)


def test_cached_follow_up_is_the_transformers_greedy_text(client, hf):
    """The second turn reuses the first turn's K/V; transformers evaluates the whole
    conversation from scratch."""
    turn1 = client.chat.completions.create(model="x", messages=USER, max_tokens=12, temperature=0)
    follow_up = USER + [{"role": "assistant", "content": turn1.choices[0].message.content},
                        {"role": "user", "content": "And in a year?"}]
    tokens, finish = hf.greedy(hf.chat_ids(follow_up), 8)
    turn2 = client.chat.completions.create(model="x", messages=follow_up, max_tokens=8, temperature=0)
    assert turn2.model_extra["timings"]["cached_tokens"] > 0, "the follow-up did not reuse the cache"
    assert turn2.choices[0].message.content == hf.text(tokens)
    assert turn2.choices[0].finish_reason == finish


def test_logprobs_match_transformers(client, hf):
    prompt_ids = hf.chat_ids(USER)
    tokens, _ = hf.greedy(prompt_ids, 8)
    resp = client.chat.completions.create(model="x", messages=USER, max_tokens=8, temperature=0,
                                          logprobs=True, top_logprobs=1)
    got = np.array([e.logprob for e in resp.choices[0].logprobs.content])
    want = hf.chosen_logprobs(prompt_ids, tokens)
    # Measured: |forgert - transformers| <= 1.7e-3 over these 8 steps -> 5e-3 (the logprobs come
    # from decode steps, transformers from one teacher-forced pass).
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-3)


def test_concurrent_clients_each_get_the_transformers_greedy_text(client, hf):
    """Completions and a chat in flight together (half of them streamed), each answer checked
    against transformers run on its own."""
    from concurrent.futures import ThreadPoolExecutor

    def complete(prompt, stream):
        kw = dict(model="x", max_tokens=8, temperature=0)
        if prompt is None:
            if stream:
                chunks = client.chat.completions.create(messages=USER, stream=True, **kw)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return client.chat.completions.create(messages=USER, **kw).choices[0].message.content
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(prompt=prompt, stream=True, **kw))
        return client.completions.create(prompt=prompt, **kw).choices[0].text

    jobs = [(p, stream) for p in RAW_PROMPTS + [None] for stream in (False, True)]
    expected = [hf.text(hf.greedy(hf.chat_ids(USER), 8)[0]) if p is None
                else hf.text(hf.greedy(hf.text_ids(p), 8, stop_at_end_of_turn=False)[0]) for p, _ in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        got = list(pool.map(lambda job: complete(*job), jobs))
    assert got == expected
