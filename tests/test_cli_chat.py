"""`forgert chat` driven through a pseudo-terminal, as a person would use it."""
from __future__ import annotations

import sys

import pytest

from server_harness import load_model

from conftest import subprocess_env

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.slow

MAX_TOKENS = 8
N_CTX = 256


def spawn_chat(model_path, *extra):
    env = subprocess_env(TERM="dumb")
    args = ["-m", "forgert", "chat", "--model", str(model_path), "--temperature", "0",
            "--max-tokens", str(MAX_TOKENS), "--n-ctx", str(N_CTX), *extra]
    return pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=300,
                         dimensions=(40, 200))


def answer_between_prompts(child) -> str:
    """The text printed between sending a line and the next prompt, without the echoed line."""
    child.expect_exact(">>> ")
    lines = child.before.replace("\r\n", "\n").split("\n")
    return "\n".join(lines[1:])    # lines[0] is the terminal's echo of what we typed


def test_one_exchange_then_reset_and_exit(smollm2_gguf):
    question = "What is the capital of France?"
    reference = load_model(smollm2_gguf, n_ctx=N_CTX).chat([{"role": "user", "content": question}],
                                                          max_tokens=MAX_TOKENS, temperature=0)
    child = spawn_chat(smollm2_gguf)
    try:
        child.expect_exact(">>> ")
        child.sendline(question)
        printed = answer_between_prompts(child)
        assert reference.text.strip() and reference.text.strip() in printed
        child.sendline("/reset")
        assert "conversation cleared" in answer_between_prompts(child)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_second_turn_continues_the_conversation(smollm2_gguf):
    first, second = "My name is Ada.", "What is my name?"
    model = load_model(smollm2_gguf, n_ctx=N_CTX)
    turn1 = model.chat([{"role": "user", "content": first}], max_tokens=MAX_TOKENS, temperature=0)
    turn2 = model.chat([{"role": "user", "content": first},
                        {"role": "assistant", "content": turn1.text},
                        {"role": "user", "content": second}], max_tokens=MAX_TOKENS, temperature=0)
    child = spawn_chat(smollm2_gguf, "--stats", "--profile")
    try:
        child.expect_exact(">>> ")
        child.sendline(first)
        answer_between_prompts(child)
        child.sendline(second)
        printed = answer_between_prompts(child)
        assert turn2.text.strip() in printed
        # The follow-up reused the first turn from the prompt cache.
        cached = int(printed.split(" cached")[0].rsplit(" ", 1)[-1])
        assert cached > 0
        assert "last forward pass: embed" in printed and "layers" in printed
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_bad_model_path_is_a_clear_error(tmp_path):
    child = spawn_chat(tmp_path / "missing.gguf")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "model not found" in child.before and "Traceback" not in child.before


def test_conversation_past_the_context_names_the_flag(smollm2_gguf, monkeypatch, capsys):
    """A turn that no longer fits is refused in CLI terms, and the session goes on."""
    import io
    from forgert.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO("tell me about " + "rivers and " * 40 + "\n/exit\n"))
    assert main(["chat", "--model", str(smollm2_gguf), "--n-ctx", "48", "-n", "4"]) == 0
    err = capsys.readouterr().err
    assert "but the context holds 48: shorten the prompt or raise --n-ctx" in err
    assert "/reset starts a new conversation" in err
    assert "Model" not in err and "Traceback" not in err
