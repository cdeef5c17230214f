"""Named chat templates: a model's "tool_use" template beside its default one (Hermes 2 Pro /
Hermes 3, Command R ship both; the default ignores tools). Read from an HF directory (a list in
tokenizer_config.json, or chat_template.jinja + additional_chat_templates/NAME.jinja, which take
priority) and from a GGUF (llama.cpp's converter layout), chosen as transformers chooses: with
tools, "tool_use". The reference for the choice and the rendering is transformers'
apply_chat_template on the same directory; the GGUF layout is checked with the `gguf` package.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import subprocess_env
from scripted_model import ScriptedModel
from server_harness import LiveServer

transformers = pytest.importorskip("transformers")

DEFAULT = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# a Mistral-style tool template: the server must read the model's calls in the style it teaches
TOOL_USE = ("{% if tools %}[AVAILABLE_TOOLS]{% for t in tools %}{{ t.function.name }};{% endfor %}"
            "[/AVAILABLE_TOOLS]{% endif %}{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}{# calls: [TOOL_CALLS] #}")
STALE = "{% for m in messages %}STALE {{ m.content }}{% endfor %}"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]


def hf_dir(tiny_models, tmp_path, layout: str):
    """A copy of the tiny model's HF directory with its templates laid out as `layout` says."""
    d = tmp_path / layout
    shutil.copytree(tiny_models("llama_tied").path("hf-F32"), d)
    config_path = d / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if layout == "config-list":
        config["chat_template"] = [{"name": "default", "template": DEFAULT}, {"name": "tool_use", "template": TOOL_USE}]
    else:   # jinja files, beside an older template in the config that they take priority over
        config["chat_template"] = STALE
        (d / "chat_template.jinja").write_text(DEFAULT)
        (d / "additional_chat_templates").mkdir()
        (d / "additional_chat_templates" / "tool_use.jinja").write_text(TOOL_USE)
    config_path.write_text(json.dumps(config))
    return d


def reference(d, tools):
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    return tok.apply_chat_template(MESSAGES, tools=tools, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("layout", ["config-list", "jinja-files"])
def test_hf_directory_tool_use_template_chosen_as_transformers_does(forgert, tiny_models, tmp_path, layout):
    d = hf_dir(tiny_models, tmp_path, layout)
    m = forgert.Model(str(d), backend="cpu", n_ctx=128)
    assert m.info()["named_chat_templates"] == ["tool_use"]
    assert m.chat_template == DEFAULT
    without, with_tools = m.apply_chat_template(MESSAGES), m.apply_chat_template(MESSAGES, tools=[WEATHER])
    assert without == reference(d, None)
    assert with_tools == reference(d, [WEATHER])
    assert with_tools.startswith("[AVAILABLE_TOOLS]get_weather;[/AVAILABLE_TOOLS][system]Be brief.")
    assert m.prompt_tokens(MESSAGES, tools=[WEATHER]) == m.tokenize(with_tools, add_bos=False)


def test_gguf_named_templates_written_and_read_as_llama_cpp_does(forgert, tiny_models, tmp_path):
    """forgert quantize of the HF directory writes the converter's keys (gguf-py's
    add_chat_template: the default in tokenizer.chat_template, the others listed in
    tokenizer.chat_templates, each in tokenizer.chat_template.NAME), and the GGUF renders as the
    directory did."""
    gguf = pytest.importorskip("gguf")
    d = hf_dir(tiny_models, tmp_path, "config-list")
    out = tmp_path / "tiny.gguf"
    r = subprocess.run([sys.executable, "-m", "forgert", "quantize", str(d), str(out), "--type", "q8_0"],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(str(out))

    def string(key):
        f = reader.fields[key]
        return bytes(f.parts[f.data[0]]).decode()
    names = reader.fields[gguf.Keys.Tokenizer.CHAT_TEMPLATES]
    assert [bytes(names.parts[i]).decode() for i in names.data] == ["tool_use"]
    assert string(gguf.Keys.Tokenizer.CHAT_TEMPLATE) == DEFAULT
    assert string(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="tool_use")) == TOOL_USE

    m = forgert.Model(str(out), backend="cpu", n_ctx=128)
    assert m.info()["named_chat_templates"] == ["tool_use"]
    assert m.apply_chat_template(MESSAGES) == reference(d, None)
    assert m.apply_chat_template(MESSAGES, tools=[WEATHER]) == reference(d, [WEATHER])
    # re-quantizing the GGUF keeps them
    again = tmp_path / "again.gguf"
    r = subprocess.run([sys.executable, "-m", "forgert", "quantize", str(out), str(again), "--type", "q4_0"],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    m2 = forgert.Model(str(again), backend="cpu", n_ctx=128)
    assert m2.apply_chat_template(MESSAGES, tools=[WEATHER]) == reference(d, [WEATHER])
    info = subprocess.run([sys.executable, "-m", "forgert", "info", str(again)], capture_output=True, text=True,
                          timeout=300, env=subprocess_env())
    assert f"'tool_use': {len(TOOL_USE)} characters" in info.stdout, info.stdout


def test_gguf_names_without_their_template_are_refused(tiny_models, tmp_path):
    from forgert.chat_templates import gguf_chat_templates
    from forgert.errors import ModelFormatError
    meta = {"tokenizer.chat_template": DEFAULT, "tokenizer.chat_templates": ["tool_use"]}
    with pytest.raises(ModelFormatError, match=r"names the chat template 'tool_use', but "
                                               r"'tokenizer.chat_template.tool_use' is missing"):
        gguf_chat_templates(meta, "x.gguf")
    with pytest.raises(ModelFormatError, match="must be an array of strings"):
        gguf_chat_templates({"tokenizer.chat_templates": "tool_use"}, "x.gguf")


@pytest.mark.parametrize("stream", [False, True])
def test_server_reads_calls_in_the_tool_use_templates_style(forgert, tiny_models, stream):
    """A chat request with tools renders with the tool_use template and reads the model's text
    in the call format that template teaches (Mistral's [TOOL_CALLS] here; the default template
    teaches none, whose fallback, Hermes, would leave the call as content)."""
    model = forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=256)
    model._model.named_chat_templates = {"tool_use": TOOL_USE}
    script = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    with LiveServer(ScriptedModel(model, script, DEFAULT), model_id="scripted") as server:
        client = server.openai_client()
        kwargs = dict(model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
        if stream:
            calls, reason = {}, None
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
                    entry = calls.setdefault(tc.index, ["", ""])
                    entry[0] += tc.function.name or ""
                    entry[1] += tc.function.arguments or ""
                reason = (chunk.choices[0].finish_reason if chunk.choices else None) or reason
            calls = [(n, json.loads(a)) for _, (n, a) in sorted(calls.items())]
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or ()]
            reason = choice.finish_reason
    assert reason == "tool_calls"
    assert calls == [("get_weather", {"city": "Paris"})]
