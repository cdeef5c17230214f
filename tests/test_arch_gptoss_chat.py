"""gpt-oss's chat format (harmony): generation stops at <|return|> / <|call|> and not at <|end|>,
found by the tokens' text in the file's vocabulary (GGUF and HF directory alike), and the server
returns the analysis channel as `reasoning_content` and the final channel as `content`, whole and
streamed, to the official `openai` client.

The tokenizer is model_factory's tiny BPE with harmony's special tokens added (their ids are
whatever the tokenizer gives them: nothing here knows gpt-oss's real ids); the template is a
minimal harmony template (gpt-oss's own also needs strftime_now and a system preamble).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import gptoss_factory as gf
import model_factory as mf
from server_harness import LiveServer
from test_server_output_parsing import ScriptedModel

from forgert.server.harmony_output import HarmonyOutput, is_harmony

HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
HARMONY_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- else -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")
REASONING = "The user wants the capital; <|en is not a marker, nor is <|end without its bar."
ANSWER = "Paris."
SCRIPT = (f"<|channel|>analysis<|message|>{REASONING}<|end|>"
          f"<|start|>assistant<|channel|>final<|message|>{ANSWER}")


@pytest.fixture(scope="module")
def harmony(tmp_path_factory):
    """(gguf path, hf dir, tokenizer): a tiny gpt-oss whose vocabulary has harmony's tokens."""
    import json as _json
    root = tmp_path_factory.mktemp("gptoss_chat")
    tok = mf.build_tokenizer()
    tok.add_special_tokens(HARMONY_TOKENS)
    model = gf.build_gpt_oss(tok.get_vocab_size())
    gguf_path = gf.write_gguf(model, root / "m.gguf", "F32", tok, chat_template=HARMONY_TEMPLATE)
    hf_dir = gf.save_hf(model, tok, root / "hf", "F32")
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = _json.loads(cfg_path.read_text())
    cfg["chat_template"] = HARMONY_TEMPLATE
    cfg_path.write_text(_json.dumps(cfg))
    return gguf_path, hf_dir, tok


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_stops_are_return_and_call_not_end(forgert, harmony, fmt):
    gguf_path, hf_dir, tok = harmony
    m = forgert.Model(str(gguf_path if fmt == "gguf" else hf_dir), backend="cpu", n_ctx=64)
    ret, call, end = (tok.token_to_id(t) for t in ("<|return|>", "<|call|>", "<|end|>"))
    assert {ret, call} <= m.tokenizer.stop_ids and end not in m.tokenizer.stop_ids
    prompt = m.tokenize("<|start|>user<|message|>hi<|end|><|start|>assistant", add_bos=False)
    assert prompt[0] == tok.token_to_id("<|start|>") and end in prompt    # one id each
    # <|end|> forced at every step: it closes a message and generation goes on to max_tokens
    c = m.generate(prompt, max_tokens=5, temperature=0, logit_bias={end: 100})
    assert (c.tokens, c.finish_reason) == ([end] * 5, "length")
    for stop in (ret, call):
        c = m.generate(prompt, max_tokens=5, temperature=0, logit_bias={stop: 100})
        assert (c.tokens, c.text, c.finish_reason) == ([], "", "stop")


def test_template_is_recognised_as_harmony():
    assert is_harmony(HARMONY_TEMPLATE)
    assert not is_harmony("{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")


def feed(text: str, size: int):
    out, content, reasoning = HarmonyOutput(), "", ""
    for i in range(0, len(text), size):
        d = out.feed(text[i:i + size])
        content, reasoning = content + d.content, reasoning + d.reasoning
    d = out.finish()
    assert (out.content, out.reasoning) == (content + d.content, reasoning + d.reasoning)   # deltas add up
    return content + d.content, reasoning + d.reasoning


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_channels_split_in_any_pieces(size):
    assert feed(SCRIPT, size) == (ANSWER, REASONING)
    # no analysis: all content; a commentary channel's body is content too
    assert feed("<|channel|>final<|message|>Hi.", size) == ("Hi.", "")
    assert feed("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}", size) == ("{}", "")
    # cut off inside the analysis (max_tokens): what there is is reasoning; a bare header is dropped
    assert feed("<|channel|>analysis<|message|>hmm", size) == ("", "hmm")
    assert feed(f"<|channel|>analysis<|message|>a<|end|><|start|>assistant<|chan", size) == ("", "a")
    # a model that writes no header at all: plain content
    assert feed("Just text <|end", size) == ("Just text <|end", "")


@pytest.mark.parametrize("stream", [False, True])
def test_server_returns_analysis_as_reasoning_content(forgert, harmony, stream):
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=256)
    with LiveServer(ScriptedModel(m, SCRIPT, HARMONY_TEMPLATE), model_id="scripted") as srv:
        client = srv.openai_client()
        messages = [{"role": "user", "content": "Capital of France?"}]
        if stream:
            content = reasoning = ""
            for chunk in client.chat.completions.create(model="scripted", messages=messages, stream=True):
                if chunk.choices:
                    d = chunk.choices[0].delta
                    content += d.content or ""
                    reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        else:
            msg = client.chat.completions.create(model="scripted", messages=messages).choices[0].message
            content, reasoning = msg.content, msg.model_extra["reasoning_content"]
    assert (content, reasoning) == (ANSWER, REASONING)
