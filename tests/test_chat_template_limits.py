"""A hostile chat template (it comes from the model file) ends with a ChatTemplateError naming the
limit it passed (chat_limits.py), not by exhausting memory or running for minutes; templates that
stay inside the limits render as before (test_chat_template renders the real ones)."""
from __future__ import annotations

import pytest

from forgert.chat import ChatTemplate, ChatTemplateError
from forgert.chat_limits import MAX_INT_BITS, MAX_STEPS, WRITE_FACTOR

MESSAGES = [{"role": "user", "content": "hi"}]
LIMIT = 100_000   # max_chars for these tests: small, so that passing it costs little


def render(source, max_chars=LIMIT):
    return ChatTemplate(source, max_chars=max_chars).render(MESSAGES)


@pytest.mark.parametrize("source,match", [
    # memory: repetition, concatenation and doubling, padding, replacing, joining, formatting
    ("{{ 'a' * 10**10 }}", r"a repetition \(1 items \* 10000000000\)"),
    ("{{ [1, 2] * 10**9 }}", "a repetition"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
     "a concatenation"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "a '~' concatenation"),
    ("{{ 'a'.ljust(10**10) }}", r"str\.ljust"),
    ("{{ 'a'|center(10**10) }}", "filter 'center'"),
    ("{{ ('a' * 1000)|replace('a', 'b' * 1000) }}", "filter 'replace'"),
    ("{{ ('a' * 1000).replace('', 'b' * 1000) }}", r"str\.replace"),
    ("{{ range(100000)|join('x' * 1000) }}", "filter 'join'"),
    ("{{ '%999999999d' % 1 }}", "format width or precision of 8 or more digits"),
    ("{{ '{:>999999999}'.format(1) }}", "format width or precision of 8 or more digits"),
    ("{{ '{:>{}}'.format(1, 10**9) }}", "a nested format width"),
    ("{{ '%s'|format('a')|indent(10**9) }}", "filter 'indent'"),
    ("{{ '%*d' % (10**9, 1) }}", r"a '\*' format width"),
    ("{{ 'a'.encode() * 10**10 }}", "a repetition"),
    ("{{ messages|tojson(indent=10**9) }}", "filter 'tojson' was given an indent of 1000000000"),
    ("{{ lipsum(10**6, html=False, min=100, max=100) }}", r"lipsum\(1000000, max=100\)"),
    # integers
    ("{{ 10**1000000 }}", f"{MAX_INT_BITS}-bit limit"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
     f"{MAX_INT_BITS}-bit limit"),
    # output, written out directly and through a macro's / {% set %} block's buffer (each
    # iteration writing a new string: the budget on all characters written)
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
     f"its output passed {LIMIT} characters"),
    ("{% macro m() %}{% for i in range(1000) %}x{% endfor %}{% endmacro %}{% for i in range(1000) %}{{ m() }}"
     "{% endfor %}", f"its output passed {LIMIT} characters"),
    ("{% macro m() %}{% for i in range(100000) %}{{ 'x' * 99999 ~ i }}{% endfor %}{% endmacro %}{{ m() }}",
     f"wrote {WRITE_FACTOR * LIMIT} characters"),
    ("{% set s %}{% for i in range(100000) %}{{ 'x' * 99999 ~ i }}{% endfor %}{% endset %}",
     f"wrote {WRITE_FACTOR * LIMIT} characters"),
    ("{% set s %}{% for i in range(100000) %}xxxxxxxxx{% endfor %}{% endset %}", "a block's output of 900000"),
    # time: loops and calls that write nothing
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     f"stopped after {MAX_STEPS} steps"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     f"stopped after {MAX_STEPS} steps"),
    ("{% for m in messages * 100000 %}{% for n in messages * 100000 %}{% endfor %}{% endfor %}",
     f"stopped after {MAX_STEPS} steps"),
    # recursion
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed past Python's recursion limit"),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "recursed past Python's recursion limit"),
])
def test_hostile_template_stops_naming_its_limit(source, match):
    with pytest.raises(ChatTemplateError, match=match):
        render(source)


def test_deeply_nested_source_is_a_compile_error():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}")


def test_within_the_limits_renders_as_before():
    """Exactly at the limit still renders; one character more does not."""
    assert render("{{ 'a' * 1000 }}{{ 'b' ~ 'c' }}{{ 'x'|center(5) }}{{ '%5d' % 3 }}") == "a" * 1000 + "bc  x      3"
    assert len(render("{% for i in range(100) %}{{ 'y' * 1000 }}{% endfor %}")) == LIMIT
    with pytest.raises(ChatTemplateError, match=f"its output passed {LIMIT} characters"):
        render("{% for i in range(100) %}{{ 'y' * 1000 }}{% endfor %}z")
    assert render("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok") == "ok"
    assert render("{{ 2**100 }}") == str(2**100)


def test_steps_are_per_render():
    t = ChatTemplate("{% for i in range(3000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok", max_chars=LIMIT)
    for _ in range(3):   # 3M steps each, 9M in all: each render has its own budget
        assert t.render(MESSAGES) == "ok"


def test_a_models_limit_scales_with_its_context(forgert, tiny_models):
    from forgert.chat_limits import CHARS_FACTOR, max_chars_for
    m = forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)
    m._model.chat_template = "{{ 'a' * 10**10 }}"   # as a hostile model file would hold it
    limit = max_chars_for(64, m.tokenizer.longest_token())
    assert limit == 64 * max(m.tokenizer.longest_token(), 16) * CHARS_FACTOR
    with pytest.raises(ChatTemplateError, match=f"pass the {limit}-character limit on a rendering "
                                                 f"\\({CHARS_FACTOR} times the characters the model's context holds"):
        m.apply_chat_template(MESSAGES)


def test_server_answers_a_hostile_template_with_a_400(forgert, tiny_models):
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    m = forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)
    m._model.chat_template = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    client = TestClient(create_app(m, "tiny", None), raise_server_exceptions=False)
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert f"stopped after {MAX_STEPS} steps" in r.json()["error"]["message"]
