"""Bad model files and bad arguments: each raises a ValueError (forgert.ModelFormatError for
files) whose message names the file and the problem; nothing crashes or hangs.

Files are valid tiny models from model_factory, then damaged byte by byte or written with a
tensor dropped, reshaped or retyped.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct

import gguf
import numpy as np
import pytest

import model_factory as mf

# A llama spec whose FFN width (256) can hold a K-quant tensor (256-element super-blocks).
BAD_SPEC = dataclasses.replace(mf.SPECS["llama_tied"], name="bad_files", ffn=256, n_ctx=64)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    """(spec, HF model, tokenizer, dir, valid Q8_0 GGUF path)."""
    d = tmp_path_factory.mktemp("bad_files")
    model = mf.build_hf_model(BAD_SPEC, tiny_tokenizer.get_vocab_size())
    path = mf.write_gguf(model, BAD_SPEC, tiny_tokenizer, d / "valid.gguf", "Q8_0")
    return BAD_SPEC, model, tiny_tokenizer, d, path


def expect_error(forgert, path, pattern: str, name_in_message: str | None = None):
    """Model(path) must raise a ValueError whose message matches `pattern` and names the file."""
    with pytest.raises(ValueError) as info:
        forgert.Model(str(path), backend="cpu")
    msg = str(info.value)
    assert re.search(pattern, msg, re.IGNORECASE), f"message does not say what is wrong: {msg!r}"
    expected_name = name_in_message or path.name
    assert expected_name in msg, f"message does not name {expected_name!r}: {msg!r}"
    return msg


def write_bytes(base, name: str, data: bytes):
    p = base[3] / name
    p.write_bytes(data)
    return p


def test_valid_file_loads(forgert, base):
    """The undamaged file loads and runs (so the failures below are caused by the damage)."""
    m = forgert.Model(str(base[4]), backend="cpu")
    assert m.logits([1, 2, 3]).shape == (3, m.vocab_size)


# ----------------------------------------------------------------------------- damaged GGUF bytes

def _tensor_data_start(path) -> int:
    r = gguf.GGUFReader(str(path))
    return int(min(t.data_offset for t in r.tensors))


@pytest.mark.parametrize("where", ["empty", "in_header", "in_metadata", "in_tensor_infos", "in_data", "last_byte"])
def test_truncated_gguf(forgert, base, where):
    data = base[4].read_bytes()
    start = _tensor_data_start(base[4])
    cut = {
        "empty": 0, "in_header": 10, "in_metadata": 200, "in_tensor_infos": start - 40,
        "in_data": (start + len(data)) // 2, "last_byte": len(data) - 1,
    }[where]
    p = write_bytes(base, f"truncated_{where}.gguf", data[:cut])
    expect_error(forgert, p, r"truncat|empty|too small|too short|end of (the )?file")


def test_bad_magic(forgert, base):
    data = bytearray(base[4].read_bytes())
    data[:4] = b"GGUX"
    p = write_bytes(base, "bad_magic.gguf", bytes(data))
    expect_error(forgert, p, r"magic|not a GGUF")


def test_unsupported_version(forgert, base):
    data = bytearray(base[4].read_bytes())
    data[4:8] = struct.pack("<I", 99)
    p = write_bytes(base, "version99.gguf", bytes(data))
    expect_error(forgert, p, r"version")


# header: magic u32, version u32, n_tensors u64 @8, n_kv u64 @16, then the first key's length u64 @24
@pytest.mark.parametrize("field,offset", [("tensor count", 8), ("metadata count", 16), ("key length", 24)])
@pytest.mark.parametrize("value", [2 ** 40, 2 ** 63 - 1, 2 ** 64 - 1])
def test_absurd_counts(forgert, base, field, offset, value):
    data = bytearray(base[4].read_bytes())
    data[offset:offset + 8] = struct.pack("<Q", value)
    p = write_bytes(base, f"absurd_{offset}_{value}.gguf", bytes(data))
    expect_error(forgert, p, r"absurd|truncat|corrupt|too (large|many|long)|exceed|count|length")


def test_absurd_array_length(forgert, base):
    """The token list claims 2^61 strings."""
    data = bytearray(base[4].read_bytes())
    key = b"tokenizer.ggml.tokens"
    i = data.index(key) + len(key)
    # value type u32 (9 = array), element type u32 (8 = string), then the u64 element count
    assert struct.unpack_from("<II", data, i) == (9, 8)
    struct.pack_into("<Q", data, i + 8, 2 ** 61)
    p = write_bytes(base, "absurd_array.gguf", bytes(data))
    expect_error(forgert, p, r"absurd|truncat|corrupt|too (large|many|long)|exceed")


def test_absurd_tensor_dims(forgert, base):
    """A weight claims 2^40 rows: more data than the file holds."""
    spec, model, tok, d, _ = base
    tensors = mf.gguf_tensors(model, spec)
    p = d / "huge_dims.gguf"
    mf.write_gguf(model, spec, tok, p, "F32", tensors=tensors)
    data = bytearray(p.read_bytes())
    name = b"blk.0.ffn_up.weight"
    i = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, i)[0]
    assert n_dims == 2
    struct.pack_into("<Q", data, i + 4 + 8, 2 ** 40)   # ne[1] = rows
    p.write_bytes(bytes(data))
    expect_error(forgert, p, r"absurd|truncat|corrupt|too (large|many)|exceed|shape|needs bytes")


# A child loads one mutant under a 2 GiB address-space cap and prints what it raised: a count
# the loader sized anything from (block_count = 2^32 - 1 once built 2^32 layers of expected
# shapes: 5.9 GB, then a bare MemoryError) shows up as a MemoryError, not as a hang of pytest.
CAPPED_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import forgert
try:
    forgert.Model(sys.argv[1], backend="cpu", n_ctx=16)
    print("RESULT loaded")
except Exception as e:
    print("RESULT", type(e).__name__, e)
"""


def _kv_value_offset(data: bytes, key: str) -> int:
    """Byte offset of a metadata key's value type (the u32 after the key) in a GGUF."""
    k = struct.pack("<Q", len(key)) + key.encode()
    assert data.count(k) == 1, key
    return data.index(k) + len(k)


def _set_u32_kv(key, value):
    def edit(data):
        i = _kv_value_offset(data, key)
        assert struct.unpack_from("<I", data, i)[0] == 4   # GGUF uint32, as the converter writes
        struct.pack_into("<I", data, i + 4, value)
    return edit


def _without_kv(key):
    """The key renamed in place (same length), so the loader sees it absent."""
    def edit(data):
        k = key.encode()
        assert data.count(k) == 1
        data[:] = data.replace(k, k[:-2] + b"__")
    return edit


def _both(*edits):
    def edit(data):
        for e in edits:
            e(data)
    return edit


def _set_header_u64(offset, value):
    def edit(data):
        struct.pack_into("<Q", data, offset, value)
    return edit


def _set_token_count(value):
    def edit(data):
        i = _kv_value_offset(data, "tokenizer.ggml.tokens")
        assert struct.unpack_from("<II", data, i) == (9, 8)   # array of strings
        struct.pack_into("<Q", data, i + 8, value)
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set_u32_kv("llama.block_count", 0xFFFFFFFF), r"'llama\.block_count' = 4294967295 is more than the number of tensors"),
    (_set_u32_kv("llama.block_count", 2 ** 31), r"'llama\.block_count' = 2147483648 is more than the number of tensors"),
    (_set_u32_kv("llama.embedding_length", 0xFFFFFFFF), r"'llama\.embedding_length' = 4294967295 is more than the largest"),
    # without rope.dimension_count, head_dim = embedding_length / heads sized the RoPE table
    (_both(_set_u32_kv("llama.embedding_length", 0xFFFFFFFF), _without_kv("llama.rope.dimension_count")),
     r"'llama\.embedding_length' = 4294967295 is more than the largest"),
    (_set_u32_kv("llama.feed_forward_length", 2 ** 31), r"'llama\.feed_forward_length' = 2147483648 is more than the largest"),
    (_set_u32_kv("llama.attention.head_count", 0xFFFFFFFF), r"'llama\.attention\.head_count' = 4294967295 is more"),
    (_set_u32_kv("llama.attention.head_count_kv", 2 ** 31), r"'llama\.attention\.head_count_kv' = 2147483648 is more"),
    (_set_header_u64(8, 2 ** 62), r"absurd tensor count 4611686018427387904"),
    (_set_header_u64(16, 2 ** 62), r"absurd metadata count 4611686018427387904"),
    (_set_token_count(2 ** 62), r"'tokenizer\.ggml\.tokens' claims 4611686018427387904 elements"),
], ids=["block_count_2^32-1", "block_count_2^31", "embedding_length", "embedding_length_no_rope_dim", "ffn_length", "head_count", "head_count_kv",
        "tensor_count", "kv_count", "token_array_length"])
def test_header_counts_are_bounded_by_the_file(base, tmp_path, edit, message):
    """Every count in a GGUF header is checked against what the file can hold before anything is
    sized from it: under a 2 GiB cap the load ends in a ModelFormatError naming the file, the
    field and the value (before: MemoryError with an empty message after 5.9 GB for block_count)."""
    data = bytearray(base[4].read_bytes())
    edit(data)
    p = tmp_path / "mutant.gguf"
    p.write_bytes(bytes(data))
    result = capped_load(p, tmp_path)
    assert result.startswith("RESULT ModelFormatError mutant.gguf: "), result
    assert re.search(message, result), result


def capped_load(path, tmp_path) -> str:
    """The RESULT line of loading path in a child under the 2 GiB cap."""
    import subprocess
    import sys
    from conftest import subprocess_env
    script = tmp_path / "capped_load.py"
    script.write_text(CAPPED_LOAD)
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300,
                       env=subprocess_env())
    result = [line for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert r.returncode == 0 and result, f"child exited {r.returncode}:\n{r.stderr[-2000:]}"
    return result[0]

# ----------------------------------------------------------------------------- well-formed GGUF, wrong model

def test_unsupported_tensor_type_tq2_0(forgert, base):
    # The K-quants Q2_K .. Q6_K and IQ1-IQ4 are read (test_e2e_kquants.py, test_e2e_iq4.py,
    # test_e2e_iq_lattice.py, test_cpu_ops.py); the ternary TQ1_0 / TQ2_0 are not.
    spec, model, tok, d, _ = base
    tensors = mf.gguf_tensors(model, spec)
    rows, cols = tensors["blk.0.ffn_down.weight"].shape          # [64, 256]
    tq_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TQ2_0][1]   # 66 per 256 weights
    raw = np.random.default_rng(0).integers(0, 256, (rows, cols // 256 * tq_bytes), dtype=np.uint8)
    p = mf.write_gguf(model, spec, tok, d / "tq2_0.gguf", "Q8_0", tensors=tensors,
                      raw_overrides={"blk.0.ffn_down.weight": (raw, gguf.GGMLQuantizationType.TQ2_0)})
    msg = expect_error(forgert, p, r"TQ2_0")
    assert "blk.0.ffn_down.weight" in msg, msg


def test_missing_tensor(forgert, base):
    spec, model, tok, d, _ = base
    tensors = mf.gguf_tensors(model, spec)
    del tensors["blk.1.ffn_up.weight"]
    p = mf.write_gguf(model, spec, tok, d / "missing.gguf", "Q8_0", tensors=tensors)
    msg = expect_error(forgert, p, r"missing")
    assert "blk.1.ffn_up.weight" in msg, msg


def test_wrong_shape(forgert, base):
    spec, model, tok, d, _ = base
    tensors = mf.gguf_tensors(model, spec)
    k = tensors["blk.0.attn_k.weight"]                                  # [kv_dim 32, hidden 64]
    tensors["blk.0.attn_k.weight"] = np.concatenate([k, k])             # [64, 64]: one head too many
    p = mf.write_gguf(model, spec, tok, d / "wrong_shape.gguf", "F32", tensors=tensors)
    msg = expect_error(forgert, p, r"shape|expected")
    assert "blk.0.attn_k.weight" in msg, msg


def test_wrong_norm_length(forgert, base):
    spec, model, tok, d, _ = base
    tensors = mf.gguf_tensors(model, spec)
    tensors["output_norm.weight"] = tensors["output_norm.weight"][:-1]
    p = mf.write_gguf(model, spec, tok, d / "short_norm.gguf", "F32", tensors=tensors)
    msg = expect_error(forgert, p, r"shape|expected")
    assert "output_norm.weight" in msg, msg


def test_unsupported_architecture(forgert, tmp_path):
    """A GGUF for an architecture forgert does not run (here "gpt2")."""
    p = tmp_path / "gpt2_arch.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    mf.write_and_close(w, p)
    expect_error(forgert, p, r"gpt2")


def test_missing_metadata(forgert, base):
    """A llama GGUF without llama.block_count (the key renamed in place, same length)."""
    data = base[4].read_bytes()
    assert data.count(b"llama.block_count") == 1
    p = write_bytes(base, "no_block_count.gguf", data.replace(b"llama.block_count", b"llama.block_cnt__"))
    expect_error(forgert, p, r"block_count")


def test_not_a_model_path(forgert, tmp_path):
    p = tmp_path / "does_not_exist.gguf"
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        forgert.Model(str(p), backend="cpu")
    assert "does_not_exist.gguf" in str(info.value)


# ----------------------------------------------------------------------------- damaged HF directories

@pytest.fixture()
def hf_dir(tiny_models, tmp_path):
    """A fresh copy of a valid F32 HF directory to damage."""
    tm = tiny_models("qwen2_tied")
    d = tmp_path / "hf"
    shutil.copytree(tm.hf_dirs["F32"], d)
    return d


def _rewrite_safetensors(path, edit):
    """Rewrite a safetensors file after edit(dict of name -> np.ndarray) changes its tensors."""
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_hf_missing_tensor(forgert, hf_dir):
    _rewrite_safetensors(hf_dir / "model.safetensors",
                         lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    msg = expect_error(forgert, hf_dir, r"missing", name_in_message="hf")
    assert "up_proj" in msg or "ffn_up" in msg, msg


def test_hf_wrong_shape(forgert, hf_dir):
    def edit(t):
        t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:, :32].copy()
    _rewrite_safetensors(hf_dir / "model.safetensors", edit)
    msg = expect_error(forgert, hf_dir, r"shape|expected", name_in_message="model.safetensors")
    assert "q_proj" in msg or "attn_q" in msg, msg


def test_hf_unsupported_dtype(forgert, hf_dir):
    def edit(t):
        t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"].astype(np.float64)
    _rewrite_safetensors(hf_dir / "model.safetensors", edit)
    msg = expect_error(forgert, hf_dir, r"F64|float64|dtype", name_in_message="model.safetensors")
    assert "down_proj" in msg or "ffn_down" in msg, msg


def test_hf_truncated_safetensors(forgert, hf_dir):
    p = hf_dir / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 10])
    expect_error(forgert, hf_dir, r"truncat", name_in_message="model.safetensors")


def test_hf_bad_header_length(forgert, hf_dir):
    p = hf_dir / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[:8] = struct.pack("<Q", 2 ** 62)
    p.write_bytes(bytes(data))
    expect_error(forgert, hf_dir, r"header|truncat|larger", name_in_message="model.safetensors")


def test_hf_missing_config(forgert, hf_dir):
    (hf_dir / "config.json").unlink()
    expect_error(forgert, hf_dir, r"config\.json")


@pytest.mark.parametrize("field,value", [("num_hidden_layers", 2 ** 31), ("hidden_size", 2 ** 40),
                                         ("vocab_size", 2 ** 33)])
def test_hf_config_counts_are_bounded_by_the_tensors(hf_dir, tmp_path, field, value):
    """config.json's counts are bounded by the safetensors it sits with, before anything is sized
    from them (num_hidden_layers = 2^31 once built 2^31 layers of expected shapes)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg[field] = value
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    result = capped_load(hf_dir, tmp_path)
    assert result.startswith(f"RESULT ModelFormatError {hf_dir.name}/config.json: metadata '{field}' = {value} "
                             f"is more than"), result


def test_hf_unsupported_model_type(forgert, hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    expect_error(forgert, hf_dir, r"gpt_neox|GPTNeoX", name_in_message="")


@pytest.mark.parametrize("key,value,named", [("use_bidirectional_attention", True, "use_bidirectional_attention"),
                                              ("is_causal", False, "is_causal=false")])
def test_hf_bidirectional_attention_is_refused(forgert, hf_dir, key, value, named):
    """An encoder-style checkpoint of a decoder architecture (EmbeddingGemma's gemma3_text sets
    use_bidirectional_attention) would embed wrongly under causal attention: refused by name."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg[key] = value
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    expect_error(forgert, hf_dir, rf"bidirectional attention \({named}\)")


# ----------------------------------------------------------------------------- bad arguments to a good model

@pytest.fixture(scope="module")
def small_ctx_model(forgert, base):
    """The valid file with a 16-token context."""
    return forgert.Model(str(base[4]), backend="cpu", n_ctx=16)


@pytest.mark.parametrize("bad", [-1, 320, 10 ** 9, 2 ** 40])
def test_token_id_out_of_range(small_ctx_model, bad):
    m = small_ctx_model
    assert m.vocab_size == 320
    for call in (lambda: m.logits([1, bad, 2]),
                 lambda: m.generate([1, bad], max_tokens=2, temperature=0.0)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert str(bad) in msg and re.search(r"range|vocab", msg), msg
    # the model still works afterwards
    assert m.logits([1, 2]).shape == (2, 320)


def test_token_id_out_of_range_in_engine(small_ctx_model):
    """The native engine checks ids itself (a caller of _core gets ValueError, not a wild read)."""
    eng = small_ctx_model._engine
    with pytest.raises(ValueError):
        eng.forward(np.array([5, 320], np.int32), 0)
    with pytest.raises(ValueError):
        eng.forward(np.array([-7], np.int32), 0)


def test_prompt_longer_than_context(small_ctx_model):
    m = small_ctx_model
    for call in (lambda: m.logits(list(range(2, 19))),                          # 17 > 16
                 lambda: m.generate(list(range(2, 19)), max_tokens=1, temperature=0.0)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "17" in msg and "16" in msg and re.search(r"context", msg), msg
    assert m.logits(list(range(2, 18))).shape == (16, 320)                     # exactly full is fine


def test_generation_stops_at_context(small_ctx_model):
    """Generation that would run past n_ctx stops at the context ("length") or raises a
    ValueError; it never writes past the KV cache."""
    m = small_ctx_model
    prompt = list(range(2, 12))                                                # 10 of 16
    try:
        c = m.generate(prompt, max_tokens=100, temperature=0.0, ignore_eos=True)
    except ValueError as e:
        assert re.search(r"context", str(e)), str(e)
        return
    assert c.finish_reason == "length"
    assert len(prompt) + len(c.tokens) == m.n_ctx                              # 10 + 6 = 16, no more
    assert c.usage.total_tokens == m.n_ctx


@pytest.mark.parametrize("n_prompt, expected", [(10, 6), (15, 1), (16, 0)])
def test_generation_without_max_tokens_fills_the_context(small_ctx_model, n_prompt, expected):
    """max_tokens=None runs until the context (16) is full: prompt + completion == n_ctx,
    as OpenAI counts usage (it used to sample one token more, total_tokens 17); a prompt that
    fills the context gets no token and finish "length"."""
    m = small_ctx_model
    c = m.generate(list(range(2, 2 + n_prompt)), max_tokens=None, temperature=0.0, ignore_eos=True)
    assert (len(c.tokens), c.finish_reason) == (expected, "length")
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens == m.n_ctx


def test_engine_rejects_positions_past_context(small_ctx_model):
    eng = small_ctx_model._engine
    with pytest.raises(ValueError):
        eng.forward(np.array([1, 2, 3], np.int32), 14)                          # rows 14..16 of 16
    with pytest.raises(ValueError):
        eng.forward(np.array([1], np.int32), -1)
    with pytest.raises(ValueError):
        eng.forward(np.array([], np.int32), 0)


@pytest.mark.parametrize("kwargs", [{"n_ctx": 0}, {"n_ctx": -5}, {"threads": 0}, {"backend": "tpu"}])
def test_bad_model_arguments(forgert, base, kwargs):
    with pytest.raises(ValueError) as info:
        forgert.Model(str(base[4]), **{"backend": "cpu", **kwargs})
    assert list(kwargs)[0] in str(info.value)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("metal", marks=pytest.mark.metal)])
def test_sliding_window_attention_matches_transformers(tiny_models, tmp_path, forgert, backend):
    """Mistral-style sliding-window attention: with a window of 8, a 40-token prompt gives
    transformers' MistralForCausalLM logits at every position (the window matters from
    position 8 on), through the batched prefill and through one-token decode steps."""
    from conftest import metal_skip_reason
    if backend == "metal" and metal_skip_reason():
        pytest.skip(metal_skip_reason())
    import torch
    from transformers import LlamaForCausalLM, MistralForCausalLM
    tm = tiny_models("llama_tied")
    dst = tmp_path / "mistral_like"
    shutil.copytree(tm.path("hf-F32"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=8,
               max_position_embeddings=256)
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = np.random.default_rng(7).integers(0, tm.vocab, 40).tolist()
    ref = mf.reference_logits(mf.with_f16_kv(MistralForCausalLM.from_pretrained(str(dst), dtype=torch.float32)), ids)
    full = mf.reference_logits(
        mf.with_f16_kv(LlamaForCausalLM.from_pretrained(str(tm.path("hf-F32")), dtype=torch.float32)), ids)
    scale = float(np.abs(ref).max())
    # The window changes the answer past position 8 (the test can tell the two apart).
    assert float(np.abs(full[8:] - ref[8:]).max()) / scale > 1e-2

    m = forgert.Model(str(dst), backend=backend, n_ctx=64)
    assert m.n_ctx == 64   # longer than the window
    # F32 weights: the tiny-model bound of test_e2e_tiny (5e-4 of max|logit|).
    assert float(np.abs(m.logits(ids) - ref).max()) / scale < 5e-4
    eng = m._engine
    steps = np.concatenate([np.asarray(eng.forward(np.asarray([t], np.int32), i)).reshape(1, -1)
                            for i, t in enumerate(ids)])
    assert float(np.abs(steps - ref).max()) / scale < 5e-4
    if backend == "cpu":   # `forgert quantize` keeps the window in the GGUF it writes
        from forgert.gguf_export import export_gguf
        export_gguf(str(dst), str(tmp_path / "mistral_like.gguf"), "f32", log=lambda _msg: None)
        g = forgert.Model(str(tmp_path / "mistral_like.gguf"), backend="cpu", n_ctx=64)
        assert float(np.abs(g.logits(ids) - ref).max()) / scale < 5e-4


def test_qwen2_windows_only_the_layers_from_max_window_layers(tiny_models, tmp_path, forgert):
    """Qwen2 with use_sliding_window: layers >= max_window_layers attend over the window, the
    ones before over everything, as transformers' Qwen2ForCausalLM (layer_types) does."""
    import torch
    from transformers import Qwen2ForCausalLM
    tm = tiny_models("qwen2_tied")
    dst = tmp_path / "qwen2_window"
    shutil.copytree(tm.path("hf-F32"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("layer_types", None)   # recomputed by transformers from the three fields below
    cfg.update(use_sliding_window=True, sliding_window=6, max_window_layers=1, max_position_embeddings=256)
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = np.random.default_rng(8).integers(0, tm.vocab, 30).tolist()
    hf = Qwen2ForCausalLM.from_pretrained(str(dst), dtype=torch.float32)
    assert hf.config.layer_types == ["full_attention", "sliding_attention"]
    ref = mf.reference_logits(mf.with_f16_kv(hf), ids)
    m = forgert.Model(str(dst), backend="cpu", n_ctx=64)
    scale = float(np.abs(ref).max())
    assert float(np.abs(m.logits(ids) - ref).max()) / scale < 5e-4
    # every layer windowed is a different model: the test tells the two apart
    cfg["max_window_layers"] = 0
    (dst / "config.json").write_text(json.dumps(cfg))
    all_windowed = forgert.Model(str(dst), backend="cpu", n_ctx=64).logits(ids)
    assert float(np.abs(all_windowed - ref).max()) / scale > 1e-2


@pytest.mark.parametrize("backend", ["cpu", pytest.param("metal", marks=pytest.mark.metal)])
def test_interleaved_sliding_window_layers_match_transformers(tiny_models, tmp_path, forgert, backend):
    """layer_types in any pattern: here the window on layer 0 and full attention on layer 1
    (not a suffix of the layers: the per-layer seam), as transformers' Qwen2ForCausalLM runs it."""
    from conftest import metal_skip_reason
    if backend == "metal" and metal_skip_reason():
        pytest.skip(metal_skip_reason())
    import torch
    from transformers import Qwen2ForCausalLM
    tm = tiny_models("qwen2_tied")
    dst = tmp_path / "qwen2_interleaved"
    shutil.copytree(tm.path("hf-F32"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=5, max_position_embeddings=256,
               layer_types=["sliding_attention", "full_attention"])
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = np.random.default_rng(9).integers(0, tm.vocab, 30).tolist()
    hf = Qwen2ForCausalLM.from_pretrained(str(dst), dtype=torch.float32)
    assert hf.config.layer_types == ["sliding_attention", "full_attention"]
    ref = mf.reference_logits(mf.with_f16_kv(hf), ids)
    scale = float(np.abs(ref).max())
    m = forgert.Model(str(dst), backend=backend, n_ctx=64)
    # F32 weights: the tiny-model bound of test_e2e_tiny (5e-4 of max|logit|)
    assert float(np.abs(m.logits(ids) - ref).max()) / scale < 5e-4
    steps = np.concatenate([np.asarray(m._engine.forward(np.asarray([t], np.int32), i)).reshape(1, -1)
                            for i, t in enumerate(ids)])
    assert float(np.abs(steps - ref).max()) / scale < 5e-4
    # the mirrored pattern is a different model: the test tells the two apart
    cfg["layer_types"] = ["full_attention", "sliding_attention"]
    (dst / "config.json").write_text(json.dumps(cfg))
    mirrored = forgert.Model(str(dst), backend="cpu", n_ctx=64).logits(ids)
    assert float(np.abs(mirrored - ref).max()) / scale > 1e-2
    # GGUF's llama/qwen2 sliding_window key windows every layer: the export refuses by name
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    with pytest.raises(ModelFormatError, match="per-layer attention windows"):
        export_gguf(str(dst), str(tmp_path / "interleaved.gguf"), "f32", log=lambda _msg: None)
