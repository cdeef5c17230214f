"""Chat templates rendered by forgert vs transformers' apply_chat_template."""
from __future__ import annotations

import pytest

from forgert.chat import ChatTemplate, ChatTemplateError
from forgert.gguf import GGUFFile

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😀"},
     {"role": "user", "content": "Multi\nline\n  text"}],
]

LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
WITH_LOOP_TOOLS = (
    "{%- for m in messages -%}{%- if loop.index0 == 0 and m.role == 'system' -%}[SYS]{{ m.content }}[/SYS]"
    "{%- else -%}[{{ m.role | upper }}]{{ m.content }}{{ eos_token }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}[ASSISTANT]{%- endif -%}"
)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def smol_template(smollm2_gguf):
    meta = GGUFFile(smollm2_gguf).metadata
    return ChatTemplate(meta["tokenizer.chat_template"], "<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_model_template_matches_transformers(smol_template, reference, messages, gen):
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert smol_template.render(messages, add_generation_prompt=gen) == expected


@pytest.mark.parametrize("source", [LLAMA3_STYLE, WITH_LOOP_TOOLS])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_other_templates_match_transformers(reference, source, messages):
    ref = reference
    old = ref.chat_template
    try:
        ref.chat_template = source
        expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    finally:
        ref.chat_template = old
    ours = ChatTemplate(source, bos_token=ref.bos_token, eos_token=ref.eos_token)
    assert ours.render(messages) == expected


def test_raise_exception_becomes_a_clear_error():
    t = ChatTemplate(LLAMA3_STYLE, "<s>", "</s>")
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        t.render([{"role": "tool", "content": "x"}])


def test_strftime_now_is_available():
    t = ChatTemplate("{{ strftime_now('%Y') }}")
    import datetime
    assert t.render([{"role": "user", "content": "x"}]) == str(datetime.datetime.now().year)


def test_sandbox_blocks_attribute_escapes():
    t = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        t.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("source,match", [
    ("{% for i in range(10**9) %}x{% endfor %}", "OverflowError: Range too big"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ messages[0]['content'] + 1 }}", "TypeError"),
])
def test_templates_own_python_errors_are_chat_template_errors(source, match):
    """A template that fails in Python arithmetic (the sandbox's range limit is an OverflowError)
    gives a ChatTemplateError naming it, as its jinja errors do, not the bare Python error."""
    with pytest.raises(ChatTemplateError, match=f"the model's chat template failed: {match}"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_bad_template_source():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for x in %}")


@pytest.mark.parametrize("messages,problem", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"content": "x"}], "role"),
    ([{"role": "user"}], "content"),
    ([{"role": "user", "content": 5}], "content"),
    (["hi"], "must be a dict"),
])
def test_bad_messages(smol_template, messages, problem):
    with pytest.raises(ValueError, match=problem):
        smol_template.render(messages)


def test_content_parts_are_joined(smol_template):
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    plain = [{"role": "user", "content": "ab"}]
    assert smol_template.render(parts) == smol_template.render(plain)


@pytest.mark.slow
def test_model_chat_uses_the_template(smollm2_gguf, reference):
    import forgert
    m = forgert.Model(smollm2_gguf, n_ctx=256)
    msgs = CONVERSATIONS[1]
    assert m.apply_chat_template(msgs) == reference.apply_chat_template(msgs, tokenize=False,
                                                                        add_generation_prompt=True)
    assert m.prompt_tokens(msgs) == reference.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                                                  return_dict=False)
