"""`forgert run` and `forgert chat` against transformers (tests/smollm2_reference.py), not against
forgert's own Python API: the greedy text printed is transformers' greedy tokens decoded by
transformers' tokenizer."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import subprocess_env

pytestmark = pytest.mark.slow

# Prompts whose reference greedy steps are all clear choices (smollm2_reference.MIN_GAP).
RAW_PROMPT = "One, two, three, four,"
QUESTION = "How many days are in a week?"    # answer ends with <|im_end|> after 8 tokens


def forgert_cli(*args):
    return subprocess.run([sys.executable, "-m", "forgert", *args], capture_output=True, text=True,
                          timeout=600, env=subprocess_env())


def test_run_raw_prints_the_transformers_greedy_text(smollm2_gguf, smollm2_reference):
    hf = smollm2_reference
    tokens, _ = hf.greedy(hf.text_ids(RAW_PROMPT), 8, stop_at_end_of_turn=False)
    r = forgert_cli("run", RAW_PROMPT, "--model", str(smollm2_gguf), "--raw", "--temperature", "0",
                    "-n", "8", "--n-ctx", "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hf.text(tokens) + "\n"      # run ends the answer with one newline
    assert "finish: length" in r.stderr


def test_run_chat_prints_the_transformers_greedy_text(smollm2_gguf, smollm2_reference):
    hf = smollm2_reference
    tokens, finish = hf.greedy(hf.chat_ids([{"role": "user", "content": QUESTION}]), 12)
    r = forgert_cli("run", QUESTION, "--model", str(smollm2_gguf), "--temperature", "0", "-n", "12",
                    "--n-ctx", "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hf.text(tokens) + "\n"
    assert f"finish: {finish}" in r.stderr


def test_chat_prints_the_transformers_greedy_text(smollm2_gguf, smollm2_reference):
    """Two turns: the second is answered from the conversation so far (its K/V kept)."""
    pexpect = pytest.importorskip("pexpect")
    hf = smollm2_reference
    turn1 = [{"role": "user", "content": QUESTION}]
    answer1 = hf.text(hf.greedy(hf.chat_ids(turn1), 8)[0])     # 8 tokens, then <|im_end|>
    turn2 = turn1 + [{"role": "assistant", "content": answer1}, {"role": "user", "content": "And in a year?"}]
    answer2 = hf.text(hf.greedy(hf.chat_ids(turn2), 8)[0])
    child = pexpect.spawn(sys.executable, ["-m", "forgert", "chat", "--model", str(smollm2_gguf),
                                           "--temperature", "0", "--max-tokens", "8", "--n-ctx", "256"],
                          env=subprocess_env(TERM="dumb"), encoding="utf-8", timeout=300, dimensions=(40, 200))

    def answer_to(line: str) -> str:
        child.sendline(line)
        child.expect_exact(">>> ")
        printed = child.before.replace("\r\n", "\n").split("\n", 1)[1]     # past the echoed line
        return printed.split("[answer cut")[0].strip()       # the notice chat adds at --max-tokens

    try:
        child.expect_exact(">>> ")
        assert answer_to(QUESTION) == answer1.strip()
        assert answer_to("And in a year?") == answer2.strip()
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
