"""The OpenAI features clients rely on, driven by the official `openai` client: logprobs on
/v1/completions (streamed and not), echo with prompt logprobs, n > 1, batched prompts,
response_format (json_object, json_schema), tool calls (forced by tool_choice), `role: tool`
messages, stop strings across token boundaries, /tokenize, /detokenize, /v1/models, /metrics.

References: NumPy log-softmax of `Model.logits` from a second Model (logprobs), pydantic
validating the JSON the server returns against the same schema (structured output),
transformers' tokenizer for the GGUF (/tokenize), hand-built expectations (stop strings,
token counts). Comparisons with the Python API run alone are extra consistency checks.
"""
from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pydantic
import pytest

from smollm2_server_fixtures import client, hf_tokenizer, model, reference_model, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

USER = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# Decode-step logprobs vs one batched teacher-forced pass: measured <= 3e-3 on SmolLM2
# (test_server.py::test_logprobs); prompt logprobs come from that same batched pass: 1e-4 is
# float noise between two runs of one kernel (measured 0).
DECODE_TOL = 1e-2
BATCH_TOL = 1e-4


# ----------------------------------------------------------------------------- logprobs

@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_are_the_models_log_softmax(client, reference_model, stream):
    kwargs = dict(model="x", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        tokens, token_lps, tops = [], [], []
        for c in chunks:
            if c.choices and c.choices[0].logprobs:
                tokens += c.choices[0].logprobs.tokens
                token_lps += c.choices[0].logprobs.token_logprobs
                tops += c.choices[0].logprobs.top_logprobs
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        choice = client.completions.create(**kwargs).choices[0]
        tokens, token_lps, tops = (choice.logprobs.tokens, choice.logprobs.token_logprobs,
                                   choice.logprobs.top_logprobs)
        text = choice.text
    assert "".join(tokens) == text
    prompt = reference_model.tokenize(PROMPT)
    answer = reference_model.generate(PROMPT, max_tokens=5, temperature=0).tokens
    lp = log_softmax(reference_model.logits(prompt + answer))[len(prompt) - 1:-1]   # [5, vocab]
    assert token_lps == pytest.approx([lp[i, t] for i, t in enumerate(answer)], abs=DECODE_TOL)
    for i, top in enumerate(tops):
        assert len(top) == 3
        best = np.argsort(-lp[i])[:3]
        assert sorted(top.values(), reverse=True) == pytest.approx(lp[i, best].tolist(), abs=DECODE_TOL)


def test_echo_returns_the_prompt_with_its_logprobs(client, reference_model):
    """What lm-eval's log-likelihood requests send: echo, logprobs, max_tokens 1, token ids."""
    ids = reference_model.tokenize("Paris is the capital of France. Berlin is the capital of")
    resp = client.completions.create(model="x", prompt=ids, max_tokens=1, temperature=0, logprobs=2, echo=True)
    choice = resp.choices[0]
    lps = choice.logprobs
    assert len(lps.tokens) == len(ids) + 1          # every prompt token, then the generated one
    assert choice.text.startswith(reference_model.detokenize(ids))
    assert lps.token_logprobs[0] is None and lps.top_logprobs[0] is None   # nothing before it
    expected = log_softmax(reference_model.logits(ids))                    # [len(ids), vocab]
    assert lps.token_logprobs[1:len(ids)] == pytest.approx(
        [expected[i - 1, ids[i]] for i in range(1, len(ids))], abs=BATCH_TOL)
    for i in range(1, len(ids)):
        best = np.argsort(-expected[i - 1])[:2]
        assert sorted(lps.top_logprobs[i].values(), reverse=True) == pytest.approx(
            expected[i - 1, best].tolist(), abs=BATCH_TOL)
    # the generated token: the most likely after the whole prompt
    assert lps.token_logprobs[-1] == pytest.approx(expected[-1].max(), abs=DECODE_TOL)
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 1


def test_streamed_echo_equals_the_whole_response(client):
    kwargs = dict(model="x", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1, echo=True)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text
    streamed = [lp for c in chunks if c.logprobs for lp in c.logprobs.token_logprobs]
    assert streamed[0] is None and whole.logprobs.token_logprobs[0] is None
    assert streamed[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-6)
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset


def test_echo_without_logprobs_prefixes_the_prompt(client):
    resp = client.completions.create(model="x", prompt=PROMPT, max_tokens=3, temperature=0, echo=True)
    assert resp.choices[0].text.startswith(PROMPT) and len(resp.choices[0].text) > len(PROMPT)
    assert resp.choices[0].logprobs is None


# ----------------------------------------------------------------------------- n and batches

def test_n_greedy_choices_are_identical_and_usage_counts_the_prompt_once(client, reference_model):
    resp = client.chat.completions.create(model="x", messages=USER, max_tokens=6, temperature=0, n=3)
    alone = reference_model.chat(USER, max_tokens=6, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert [c.message.content for c in resp.choices] == [alone.text] * 3
    n_prompt = len(reference_model.prompt_tokens(USER))
    assert resp.usage.prompt_tokens == n_prompt
    assert resp.usage.completion_tokens == 3 * 6


def test_later_choices_reuse_the_prompts_kv(reference_model):
    """Each choice after the first finds the prompt in the cache and evaluates only its last
    token again (the first logits must be fresh)."""
    from forgert.server.generation import ChoiceSpec, Finish, GenerationSpec, generation_job
    ids = reference_model.prompt_tokens(USER)
    spec = GenerationSpec([ChoiceSpec(ids, seed=j, counts_prompt=j == 0) for j in range(3)],
                          {"max_tokens": 4, "temperature": 1.0}, None)
    finishes = [e for e in generation_job(reference_model, spec)() if isinstance(e, Finish)]
    assert [f.index for f in finishes] == [0, 1, 2]
    assert [f.timings["prompt_tokens_evaluated"] for f in finishes[1:]] == [1, 1]
    assert [f.timings["cached_tokens"] for f in finishes[1:]] == [len(ids) - 1] * 2


def test_n_seeded_choices_differ_and_repeat(client):
    kwargs = dict(model="x", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12,
                  temperature=1.0, seed=1234, n=3)
    first = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    again = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    assert first == again
    assert len(set(first)) == 3


def test_n_streamed_equals_n_whole(client):
    kwargs = dict(model="x", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, n=2)
    whole = client.completions.create(**kwargs)
    texts = {0: "", 1: ""}
    finished = {}
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}


def test_n_streamed_chat_choices(client, reference_model):
    alone = reference_model.chat(USER, max_tokens=5, temperature=0).text
    texts, roles, reasons = {}, {}, {}
    for chunk in client.chat.completions.create(model="x", messages=USER, max_tokens=5, temperature=0, n=2,
                                                stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            roles[c.index] = roles.get(c.index) or c.delta.role
            reasons[c.index] = c.finish_reason or reasons.get(c.index)
    assert texts == {0: alone, 1: alone}
    assert roles == {0: "assistant", 1: "assistant"} and reasons == {0: "length", 1: "length"}


def test_a_batch_of_prompts_gives_one_choice_each(client, reference_model):
    prompts = [PROMPT, "One, two, three,"]
    resp = client.completions.create(model="x", prompt=prompts, max_tokens=4, temperature=0)
    assert [c.text for c in sorted(resp.choices, key=lambda c: c.index)] == [
        reference_model.generate(p, max_tokens=4, temperature=0).text for p in prompts]
    assert resp.usage.prompt_tokens == sum(len(reference_model.tokenize(p)) for p in prompts)


# ----------------------------------------------------------------------------- structured output

class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    population_millions: int
    landmarks: list[str] = pydantic.Field(max_length=3)
    kind: str = pydantic.Field(json_schema_extra={"enum": ["capital", "town"]})


CITY_SCHEMA = {**City.model_json_schema(), "additionalProperties": False}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
CITY_ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(client, stream):
    kwargs = dict(model="x", messages=CITY_ASK, max_tokens=200, temperature=0, response_format=CITY_FORMAT)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **kwargs) if c.choices)
    else:
        resp = client.chat.completions.create(**kwargs)
        assert resp.choices[0].finish_reason == "stop"
        text = resp.choices[0].message.content
    city = City.model_validate_json(text)      # pydantic: parses and validates against the schema
    assert city.kind in ("capital", "town")


def test_json_schema_holds_while_sampling_hot(client):
    """At temperature 1.5 the unconstrained model writes noise; every seed still validates."""
    for seed in range(3):
        resp = client.chat.completions.create(model="x", messages=CITY_ASK, max_tokens=300, temperature=1.5,
                                              seed=seed, response_format=CITY_FORMAT)
        if resp.choices[0].finish_reason == "stop":
            City.model_validate_json(resp.choices[0].message.content)


def test_json_object_output_is_an_object(client):
    resp = client.chat.completions.create(model="x", messages=CITY_ASK, max_tokens=150, temperature=0,
                                          response_format={"type": "json_object"})
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_completions_accept_response_format(client):
    resp = client.completions.create(model="x", prompt="A JSON list of three numbers: ", max_tokens=40,
                                      temperature=0, extra_body={"response_format": {
                                          "type": "json_schema", "json_schema": {"name": "l", "schema": {
                                              "type": "array", "items": {"type": "integer"},
                                              "minItems": 3, "maxItems": 3}}}})
    values = json.loads(resp.choices[0].text)
    assert len(values) == 3 and all(isinstance(v, int) for v in values)


def test_python_api_response_format(reference_model):
    out = reference_model.chat(CITY_ASK, max_tokens=200, temperature=0, response_format=CITY_FORMAT)
    assert out.finish_reason == "stop"
    City.model_validate_json(out.text)
    with pytest.raises(ValueError, match="response_format"):
        reference_model.generate("x", max_tokens=2, response_format={"type": "yaml"})
    for bad in ({10**9: 1}, {"x": 1}, {5: 101}, [5]):
        with pytest.raises(ValueError, match="logit_bias"):
            reference_model.generate("x", max_tokens=2, logit_bias=bad)


# ----------------------------------------------------------------------------- tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


class WeatherArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str
    unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_returns_a_valid_call(client, stream):
    kwargs = dict(model="x", messages=ASK_WEATHER, tools=[WEATHER, TIME], max_tokens=80, temperature=0,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if stream:
        name, args, reason, content = "", "", None, ""
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or ():
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            reason = chunk.choices[0].finish_reason or reason
    else:
        msg = client.chat.completions.create(**kwargs).choices[0]
        reason, content = msg.finish_reason, msg.message.content or ""
        (call,) = msg.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        name, args = call.function.name, call.function.arguments
    assert reason == "tool_calls" and content == ""
    assert name == "get_weather"
    WeatherArgs.model_validate_json(args)


def test_required_tool_choice_calls_one_of_the_tools(client):
    resp = client.chat.completions.create(model="x", messages=ASK_WEATHER, tools=[WEATHER, TIME], max_tokens=80,
                                          temperature=0, tool_choice="required")
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        WeatherArgs.model_validate(args)
    else:
        assert set(args) == {"zone"}


def test_tools_reach_the_prompt_and_tool_results_are_accepted_back(server, client, model):
    """SmolLM2's template ignores `tools`: they go into a system message in the Hermes format;
    the assistant's call and the tool's answer are rendered back in the next turn."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    conversation = ASK_WEATHER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                                  {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"}]
    tokens = httpx.post(server.base_url + "/tokenize", headers=server.headers,
                        json={"messages": conversation}).json()["tokens"]
    text = model.detokenize(tokens)
    assert "21 degrees, sunny" in text and "<|im_start|>tool\n" in text
    with_tools = model.detokenize(model.prompt_tokens(ASK_WEATHER, tools=[WEATHER]))
    assert "<tools>" in with_tools and '"get_weather"' in with_tools and "<tool_call>" in with_tools
    resp = client.chat.completions.create(model="x", messages=conversation, tools=[WEATHER], max_tokens=5,
                                          temperature=0)
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_none_is_plain_chat(client, reference_model):
    resp = client.chat.completions.create(model="x", messages=USER, tools=[WEATHER], tool_choice="none",
                                          max_tokens=6, temperature=0)
    assert resp.choices[0].message.content == reference_model.chat(USER, max_tokens=6, temperature=0).text
    assert resp.choices[0].message.tool_calls is None


# ----------------------------------------------------------------------------- OpenAI fields

@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_beyond_four_cut_across_token_boundaries(client, reference_model, stream):
    full = reference_model.generate(PROMPT, max_tokens=24, temperature=0)
    pieces = [reference_model.detokenize([t]) for t in full.tokens]
    # A stop string spanning the boundary between tokens 3 and 4 (its last 2 + first 2 chars).
    k = next(i for i in range(3, len(pieces)) if len(pieces[i - 1]) >= 2 and len(pieces[i]) >= 2)
    before = "".join(pieces[:k])
    stop = before[-2:] + pieces[k][:2]
    assert before[:-2].find(stop) < 0
    decoys = ["zzqx", "@@@", "\u2603", "qqqq", "#!#!"]
    kwargs = dict(model="x", prompt=PROMPT, max_tokens=24, temperature=0, stop=decoys + [stop])
    if stream:
        chunks = [c.choices[0] for c in client.completions.create(stream=True, **kwargs) if c.choices]
        text, reason = "".join(c.text for c in chunks), chunks[-1].finish_reason
    else:
        choice = client.completions.create(**kwargs).choices[0]
        text, reason = choice.text, choice.finish_reason
    assert text == before[:-2]
    assert reason == "stop"


def test_logit_bias_moves_the_greedy_choice(client, reference_model):
    """-100 on the most likely next token: greedy picks the second most likely (NumPy argsort of
    the model's logits); +100 on an unlikely one: greedy picks it."""
    ids = reference_model.tokenize(PROMPT)
    order = np.argsort(-reference_model.logits(ids)[-1])
    first, second, unlikely = int(order[0]), int(order[1]), int(order[1000])
    banned = client.completions.create(model="x", prompt=PROMPT, max_tokens=1, temperature=0,
                                       logit_bias={str(first): -100})
    assert banned.choices[0].text == reference_model.detokenize([second])
    forced = client.completions.create(model="x", prompt=PROMPT, max_tokens=1, temperature=0,
                                       logit_bias={str(unlikely): 100})
    assert forced.choices[0].text == reference_model.detokenize([unlikely])


def test_max_completion_tokens_seed_and_user(client):
    kwargs = dict(model="x", messages=USER, max_completion_tokens=5, temperature=1.0, seed=42, user="alice")
    a, b = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert a.usage.completion_tokens <= 5
    assert a.choices[0].message.content == b.choices[0].message.content


def test_models_lists_the_context_length(client, model):
    card = client.models.retrieve("smollm2-test")
    assert card.model_extra["max_model_len"] == model.n_ctx == card.model_extra["context_length"]


def test_tokenize_and_detokenize(server, hf_tokenizer):
    text = "Hello world, this is forgert."
    r = httpx.post(server.base_url + "/tokenize", headers=server.headers,
                   json={"prompt": text, "add_special_tokens": False}).json()
    assert r["tokens"] == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] > 0
    back = httpx.post(server.base_url + "/detokenize", headers=server.headers, json={"tokens": r["tokens"]}).json()
    assert back["prompt"] == back["content"] == text
    chat = httpx.post(server.base_url + "/tokenize", headers=server.headers, json={"messages": USER}).json()
    expected = hf_tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert chat["tokens"] == hf_tokenizer(expected, add_special_tokens=False)["input_ids"]
    bad = httpx.post(server.base_url + "/detokenize", headers=server.headers, json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(server.base_url + "/tokenize", json={"prompt": "x"}).status_code == 401


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_requests_tokens_and_time_to_first_token(server, client):
    before = httpx.get(server.base_url + "/metrics").text
    client.completions.create(model="x", prompt=PROMPT, max_tokens=4, temperature=0,
                              extra_body={"ignore_eos": True})
    httpx.post(server.base_url + "/v1/completions", headers=server.headers, json={"prompt": 5})
    after = httpx.get(server.base_url + "/metrics").text
    ok = '{route="completions",status="200"}'
    bad = '{route="completions",status="400"}'
    assert _metric(after, "forgert_requests_total", ok) == _metric(before, "forgert_requests_total", ok) + 1
    assert _metric(after, "forgert_requests_total", bad) == _metric(before, "forgert_requests_total", bad) + 1
    assert _metric(after, "forgert_generation_tokens_total") - _metric(before, "forgert_generation_tokens_total") == 4
    n_prompt = len(httpx.post(server.base_url + "/tokenize", headers=server.headers,
                              json={"prompt": PROMPT}).json()["tokens"])
    assert _metric(after, "forgert_prompt_tokens_total") - _metric(before, "forgert_prompt_tokens_total") == n_prompt
    assert (_metric(after, "forgert_time_to_first_token_seconds_count")
            == _metric(before, "forgert_time_to_first_token_seconds_count") + 1)
    assert _metric(after, "forgert_requests_in_flight") == 0


def test_prompt_logprobs_keep_another_conversation_in_the_prompt_cache(reference_model):
    """Scoring a prompt (echo) evaluates it from position 0: the conversation it displaces is
    saved first, so its next turn still finds its prefix."""
    reference_model.set_prompt_cache(64 * 2**20)
    try:
        conversation = reference_model.tokenize("Once upon a time, in a land far away, there lived a king who")
        first = reference_model.generate(conversation, max_tokens=3, temperature=0)
        reference_model.prompt_logprobs("An unrelated sentence to score.", 1)
        follow_up = reference_model.generate(conversation + first.tokens, max_tokens=1, temperature=0)
        assert follow_up.timings.cached_tokens >= len(conversation)
    finally:
        reference_model.set_prompt_cache(0)


def test_chat_logprob_bytes_are_each_tokens_utf8_bytes(client, reference_model, hf_tokenizer):
    """OpenAI's `bytes` exist for tokens that hold part of a character (an emoji is 4 bytes, 2+
    byte-level tokens). Reference: transformers' tokenizer of the same GGUF, each answer token's
    byte-level symbols mapped back to bytes (GPT-2's table)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    messages = [{"role": "user", "content": "😀😃😄 reply only with emoji"}]
    resp = client.chat.completions.create(model="x", messages=messages, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=3)
    answer = reference_model.chat(messages, max_tokens=6, temperature=0).tokens
    byte_of = {symbol: b for b, symbol in bytes_to_unicode().items()}
    expected = [list(bytes(byte_of[c] for c in token)) for token in hf_tokenizer.convert_ids_to_tokens(answer)]
    assert any(len(b) < 4 and b[0] >= 0xf0 for b in expected)     # the answer splits an emoji
    entries = resp.choices[0].logprobs.content
    assert [e.bytes for e in entries] == expected
    assert all(e.top_logprobs[0].bytes == e.bytes for e in entries)     # greedy: the top alternative
