"""`forgert info`, `forgert bench`, `forgert serve` as subprocesses, and their bad-input handling.

`info` is checked against the gguf package's own reader (an independent parser of the file).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections import Counter

import httpx
import pytest

from conftest import cpu_flags, subprocess_env
from server_harness import free_port, wait_until

pytestmark = pytest.mark.slow

ENV = subprocess_env()


def forgert(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "forgert", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in result.stderr, result.stderr


# ----------------------------------------------------------------------------- info

def test_info_matches_the_gguf_package(smollm2_gguf):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(smollm2_gguf))
    arch = reader.fields["general.architecture"].contents()
    types = Counter(t.tensor_type.name for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)

    result = forgert("info", smollm2_gguf, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == arch
    assert info["n_layers"] == reader.fields[f"{arch}.block_count"].contents()
    assert info["dim"] == reader.fields[f"{arch}.embedding_length"].contents()
    assert info["n_heads"] == reader.fields[f"{arch}.attention.head_count"].contents()
    assert info["n_kv_heads"] == reader.fields[f"{arch}.attention.head_count_kv"].contents()
    assert info["context_length"] == reader.fields[f"{arch}.context_length"].contents()
    assert info["tensor_types"] == dict(types)
    assert info["n_params"] == n_params
    assert info["chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert info["tensors"]["blk.0.ffn_up.weight"] == {"type": t.tensor_type.name,
                                                      "shape": [int(d) for d in reversed(t.shape)]}

    text = forgert("info", smollm2_gguf)
    assert text.returncode == 0
    for expected in ("llama", "Q4_1 x210", "layers", "30", "chat template"):
        assert expected in text.stdout


def expected_kernel_sets() -> set:
    """The kernel sets forgert may pick on this x86 Linux machine, from /proc/cpuinfo's flags alone:
    AMX where the CPU lists it (some VMs list it and fault: then the AVX-512 set), else the best of
    AVX-512 VNNI, AVX-VNNI, AVX2 + FMA + F16C, the portable set."""
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        return {"avx512-vnni", "avx512-amx"} if "amx_int8" in flags else {"avx512-vnni"}
    if {"avx2", "fma", "f16c", "avx_vnni"} <= flags:
        return {"avx2-vnni"}
    if {"avx2", "fma", "f16c"} <= flags:
        return {"avx2"}
    return {"generic"}


def test_info_names_this_machines_kernel_choices(smollm2_gguf):
    """`forgert info` says what the CPU backend picked here (the issue's "the engine reports the ISA
    and kernel choices it made"), and Model.info() the same for the model it runs."""
    import os
    import platform
    import forgert as fg
    result = forgert("info", smollm2_gguf, "--json")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)["machine"]
    k = m["cpu_kernels"]
    assert k["kernels"] in k["available"]
    if platform.system() == "Linux" and platform.machine() == "x86_64" and not os.environ.get("FORGERT_CPU_ISA"):
        assert k["kernels"] in expected_kernel_sets()
    assert k["prefill_int8_parts"] == 2   # the default: two parts (FORGERT_CPU_PREFILL unset)
    assert 1 <= m["default_threads"] <= os.cpu_count()
    text = forgert("info", smollm2_gguf)
    assert text.returncode == 0
    assert "this machine" in text.stdout and f"kernels         {k['kernels']}" in text.stdout
    model = fg.Model(str(smollm2_gguf), backend="cpu", threads=1, n_ctx=64)
    info = model.info()
    assert info["threads"] == 1 and info["backend"] == f"cpu ({k['kernels']})"
    assert info["cpu_kernels"] == k


def test_info_bad_paths(tmp_path):
    assert_clean_failure(forgert("info", tmp_path / "nope.gguf"), "not found")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + bytes(100))
    assert_clean_failure(forgert("info", junk), "junk.gguf", "magic")


# ----------------------------------------------------------------------------- bench

def test_bench_reports_speeds(smollm2_gguf):
    result = forgert("bench", "--model", smollm2_gguf, "-p", 16, "-g", 4, "-r", 1, "--n-ctx", 64,
                     "--profile", "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["prompt_tokens"] == 16 and r["gen_tokens"] == 4
    assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    assert set(r["profile"]["prefill"]) == {"embed", "layers", "logits"}
    assert "run 1/1" in result.stderr      # the progress display
    assert r["decode_depth"] == 16         # by default the decode follows the prompt


def test_bench_decodes_from_an_empty_context(smollm2_gguf):
    # llama-bench's tg decodes from an empty context: -d 0 times the decode after one token
    result = forgert("bench", "--model", smollm2_gguf, "-p", 16, "-g", 4, "-r", 1, "-d", 0, "--n-ctx", 64, "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["decode_depth"] == 1 and r["prompt_tokens"] == 16
    assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0


def test_bench_bad_flags(smollm2_gguf):
    assert_clean_failure(forgert("bench", "-p", 0), "--prompt-tokens")
    assert_clean_failure(forgert("bench", "--model", smollm2_gguf, "-p", 60, "-g", 10, "--n-ctx", 64),
                         "context")
    assert_clean_failure(forgert("bench", "--repeats", "many"), "invalid int")
    assert_clean_failure(forgert("bench", "--model", smollm2_gguf, "-d", -1), "--decode-depth")
    assert_clean_failure(forgert("bench", "--model", smollm2_gguf, "-p", 8, "-d", 60, "-g", 10, "--n-ctx", 64),
                         "--decode-depth 60")


# ----------------------------------------------------------------------------- serve

def test_serve_answers_then_stops_on_ctrl_c(smollm2_gguf):
    openai = pytest.importorskip("openai")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "forgert", "serve", "--model", str(smollm2_gguf),
                             "--port", str(port), "--n-ctx", "256", "--api-key", "k",
                             "--log-level", "warning", "--max-tokens-limit", "3",
                             "--header-timeout", "5", "--body-timeout", "5", "--max-connections", "8"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            try:
                return httpx.get(base + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 120, "forgert serve to come up", poll_s=0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]
        resp = client.completions.create(model="x", prompt="The capital of France is", max_tokens=3,
                                         temperature=0)
        assert "Paris" in resp.choices[0].text
        with pytest.raises(openai.BadRequestError, match="limit of 3 tokens"):
            client.completions.create(model="x", prompt="Hi", max_tokens=4)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"http://127.0.0.1:{port}/v1" in err


def test_serve_bad_flags(smollm2_gguf, tmp_path):
    assert_clean_failure(forgert("serve", "--port", 70000), "--port")
    assert_clean_failure(forgert("serve", "--model", tmp_path / "missing.gguf", "--port", free_port()),
                         "not found")
    assert_clean_failure(forgert("serve", "--host", "no-such-host.invalid"), "cannot listen")
    assert_clean_failure(forgert("serve", "--prompt-cache-mb", "-1"), "--prompt-cache-mb")
    assert_clean_failure(forgert("serve", "--max-tokens-limit", "0"), "--max-tokens-limit")
    assert_clean_failure(forgert("serve", "--header-timeout", "0"), "--header-timeout")
    assert_clean_failure(forgert("serve", "--body-timeout", "nan"), "--body-timeout")
    assert_clean_failure(forgert("serve", "--max-connections", "0"), "--max-connections")
    assert_clean_failure(forgert("serve", "--portt", 1), "unrecognized arguments")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert_clean_failure(forgert("serve", "--port", taken.getsockname()[1]), "already in use")
