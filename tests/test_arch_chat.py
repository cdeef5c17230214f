"""Qwen3's and SmolLM3's chat templates and end-of-turn tokens, read from each form of the model
(tokenizer_config.json in an HF directory; tokenizer.chat_template and eos_token_id in a GGUF),
against transformers' apply_chat_template and tokenizer on the same directory."""
from __future__ import annotations

import json

import pytest

import model_factory as mf
from chat_templates import CHAT_SPECIAL_TOKENS, CONVERSATIONS, QWEN3_STYLE, SMOLLM3_STYLE

TEMPLATES = {"qwen3_tied": QWEN3_STYLE, "smollm3_tied": SMOLLM3_STYLE}
END_OF_TURN = "<|im_end|>"


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """spec name -> (HF dir, GGUF path): a tiny model whose vocabulary has the chat tokens, its
    template and <|im_end|> as EOS, as the Qwen3 / SmolLM3 instruct checkpoints set them."""
    out = {}
    for name, template in TEMPLATES.items():
        tok = mf.build_tokenizer()
        tok.add_special_tokens(CHAT_SPECIAL_TOKENS)
        tm = mf.make_tiny_model(mf.ARCH_SPECS[name], tmp_path_factory.mktemp("chat"), tok,
                                hf_dtypes=("F32",), gguf_types=())
        hf = tm.hf_dirs["F32"]
        tcfg = json.loads((hf / "tokenizer_config.json").read_text())
        tcfg.update(chat_template=template, eos_token=END_OF_TURN)
        (hf / "tokenizer_config.json").write_text(json.dumps(tcfg))
        gguf_path = mf.write_gguf(tm.model, tm.spec, tok, tm.root / f"{name}-chat.gguf", "F32",
                                  chat_template=template, eos_token=END_OF_TURN)
        out[name] = (hf, gguf_path)
    return out


@pytest.fixture(scope="module")
def hf_tokenizers(chat_models):
    from transformers import AutoTokenizer
    return {name: AutoTokenizer.from_pretrained(str(hf)) for name, (hf, _) in chat_models.items()}


def _model(forgert, chat_models, name, form):
    hf, gguf_path = chat_models[name]
    return forgert.Model(str(hf if form == "hf" else gguf_path), backend="cpu")


@pytest.mark.parametrize("form", ["hf", "gguf"])
@pytest.mark.parametrize("kwargs", [None, {"enable_thinking": False}, {"enable_thinking": True}])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_template_equals_apply_chat_template(forgert, chat_models, hf_tokenizers, name, conv, kwargs, form):
    messages = CONVERSATIONS[conv]
    m = _model(forgert, chat_models, name, form)
    ref_tok = hf_tokenizers[name]
    expected = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(kwargs or {}))
    text = m.apply_chat_template(messages, chat_template_kwargs=kwargs)
    assert text == expected
    # and the special tokens are single ids, as transformers encodes them
    assert m.tokenize(text, add_bos=False) == ref_tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_thinking_switch_changes_the_prompt(forgert, chat_models, name):
    """enable_thinking reaches the template (the prompts differ in the <think> pre-fill)."""
    m = _model(forgert, chat_models, name, "gguf")
    msgs = CONVERSATIONS[0]
    on = m.apply_chat_template(msgs, chat_template_kwargs={"enable_thinking": True})
    off = m.apply_chat_template(msgs, chat_template_kwargs={"enable_thinking": False})
    assert "<think>\n\n</think>" in off and "<think>\n\n</think>" not in on


@pytest.mark.parametrize("form", ["hf", "gguf"])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_end_of_turn_is_the_files_eos(forgert, chat_models, hf_tokenizers, name, form):
    m = _model(forgert, chat_models, name, form)
    im_end = hf_tokenizers[name].convert_tokens_to_ids(END_OF_TURN)
    assert m.info()["eos_token_id"] == im_end
    assert im_end in m.info()["stop_token_ids"]


def test_bad_template_kwargs_are_refused(forgert, chat_models):
    m = _model(forgert, chat_models, "qwen3_tied", "gguf")
    with pytest.raises(ValueError, match="may not set messages"):
        m.apply_chat_template(CONVERSATIONS[0], chat_template_kwargs={"messages": []})
    with pytest.raises(ValueError, match="chat_template_kwargs must be a dict"):
        m.apply_chat_template(CONVERSATIONS[0], chat_template_kwargs=["enable_thinking"])


def test_chat_passes_template_kwargs(forgert, chat_models):
    """Model.chat renders with chat_template_kwargs: its prompt is the enable_thinking=False one."""
    m = _model(forgert, chat_models, "qwen3_tied", "gguf")
    c = m.chat(CONVERSATIONS[0], max_tokens=1, temperature=0.0, chat_template_kwargs={"enable_thinking": False})
    off = m.tokenize(m.apply_chat_template(CONVERSATIONS[0], chat_template_kwargs={"enable_thinking": False}),
                     add_bos=False)
    assert c.usage.prompt_tokens == len(off)


def test_server_passes_chat_template_kwargs(forgert, chat_models):
    """/v1/chat/completions takes chat_template_kwargs (as vLLM and llama-server do): the prompt
    it counts is the one the template renders with them; a reserved name is a 400."""
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    m = _model(forgert, chat_models, "qwen3_tied", "gguf")
    msgs = CONVERSATIONS[0]
    client = TestClient(create_app(m, "tiny-qwen3", None))
    for kwargs in ({"enable_thinking": False}, {"enable_thinking": True}):
        r = client.post("/v1/chat/completions", json={"model": "tiny-qwen3", "messages": msgs, "max_tokens": 1,
                                                      "temperature": 0, "chat_template_kwargs": kwargs})
        assert r.status_code == 200, r.text
        want = m.tokenize(m.apply_chat_template(msgs, chat_template_kwargs=kwargs), add_bos=False)
        assert r.json()["usage"]["prompt_tokens"] == len(want)
    r = client.post("/v1/chat/completions", json={"model": "tiny-qwen3", "messages": msgs, "max_tokens": 1,
                                                  "chat_template_kwargs": {"add_generation_prompt": False}})
    assert r.status_code == 400 and "add_generation_prompt" in r.text


@pytest.mark.parametrize("no_think", [False, True])
def test_cli_run_no_think(forgert, chat_models, capsys, no_think):
    """`forgert run --no-think` renders the template with enable_thinking=false: the prompt it
    evaluates is that rendering's tokens (and without the flag, the default rendering's)."""
    import re
    from forgert.cli import main
    path = str(chat_models["qwen3_tied"][1])
    args = ["run", "What is 2+2?", "--model", path, "--temperature", "0", "-n", "1", "--backend", "cpu"]
    assert main(args + (["--no-think"] if no_think else [])) == 0
    evaluated = int(re.search(r"prefill: (\d+) tokens", capsys.readouterr().err).group(1))
    m = _model(forgert, chat_models, "qwen3_tied", "gguf")
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    kwargs = {"enable_thinking": False} if no_think else None
    assert evaluated == len(m.tokenize(m.apply_chat_template(msgs, chat_template_kwargs=kwargs), add_bos=False))
