"""Bad model files and bad requests: each gives a clear Python exception naming the problem."""
from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest

import model_factory as mf
from forgert import ModelFormatError
from forgert.loader import load_model


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models("llama_tied")


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen2_tied")


def gguf_variant(tm, path, tensors=None, raw_overrides=None):
    """The tiny model's F32 GGUF with tensors dropped / replaced."""
    t = dict(mf.gguf_tensors(tm.model, tm.spec)) if tensors is None else tensors
    return mf.write_gguf(tm.model, tm.spec, tm.tokenizer, path, "F32", tensors=t, raw_overrides=raw_overrides)


def test_tiny_files_load(tiny):
    for fmt in ("gguf-F32", "gguf-Q4_1", "hf-BF16"):
        m = load_model(tiny.path(fmt))
        assert m.config.n_layers == tiny.spec.n_layers and m.config.vocab == tiny.vocab
        assert m.config.rope_neox is fmt.startswith("hf")


# ------------------------------------------------------------------------------ GGUF content

def test_missing_tensor(tiny, tmp_path):
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    del t["blk.1.attn_k.weight"]
    p = gguf_variant(tiny, tmp_path / "m.gguf", tensors=t)
    with pytest.raises(ModelFormatError, match=r"m\.gguf: missing tensor 'blk\.1\.attn_k\.weight'"):
        load_model(p)


def test_a_gguf_with_its_vision_encoder_runs_its_text(tiny, tmp_path):
    """A language model's GGUF holding its encoder's tensors beside (ollama's Gemma 3: llama.cpp's
    mmproj names v.*, mm.*, a.*) loads its language model and generates what the file without
    them does, as an HF vision-language checkpoint runs on text."""
    from forgert import Model
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    plain = gguf_variant(tiny, tmp_path / "plain.gguf", tensors=dict(t))
    t.update({"v.blk.0.attn_q.weight": np.ones((16, 16), np.float32),
              "mm.input_projection.weight": np.ones((16, 8), np.float32),
              "a.blk.0.ffn_up.weight": np.ones((8, 16), np.float32)})
    both = gguf_variant(tiny, tmp_path / "both.gguf", tensors=t)
    assert "v.blk.0.attn_q.weight" not in load_model(both).weights
    ids = [5, 9, 13, 2]
    assert Model(str(both), backend="cpu", n_ctx=64).generate(ids, max_tokens=8, temperature=0).tokens == \
        Model(str(plain), backend="cpu", n_ctx=64).generate(ids, max_tokens=8, temperature=0).tokens


def test_wrong_shape(tiny, tmp_path):
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    t["blk.0.attn_q.weight"] = t["blk.0.attn_q.weight"][:32]
    p = gguf_variant(tiny, tmp_path / "m.gguf", tensors=t)
    with pytest.raises(ModelFormatError) as e:
        load_model(p)
    assert "'blk.0.attn_q.weight' has shape (32, 64), expected (64, 64)" in str(e.value)


def test_unexpected_tensor(tiny, tmp_path):
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    t["blk.0.attn_q_norm.weight"] = np.ones(16, np.float32)
    p = gguf_variant(tiny, tmp_path / "m.gguf", tensors=t)
    with pytest.raises(ModelFormatError, match="unexpected tensor 'blk.0.attn_q_norm.weight'"):
        load_model(p)


@pytest.mark.parametrize("qtype,block_bytes", [("Q8_1", 40)])
def test_unsupported_tensor_type(tiny, tmp_path, qtype, block_bytes):
    gguf = pytest.importorskip("gguf")
    rows, cols = tiny.spec.ffn, tiny.spec.hidden
    raw = np.zeros((rows, cols // 32 * block_bytes), np.uint8)
    p = gguf_variant(tiny, tmp_path / "m.gguf",
                     raw_overrides={"blk.0.ffn_up.weight": (raw, gguf.GGMLQuantizationType[qtype])})
    with pytest.raises(ModelFormatError) as e:
        load_model(p)
    assert f"tensor 'blk.0.ffn_up.weight' has type {qtype}, which forgert does not support" in str(e.value)


@pytest.mark.parametrize("type_id,name", [(34, "TQ1_0"), (35, "TQ2_0"), (15, "Q8_K")])
def test_unread_k_quant_is_refused_by_name(tiny, type_id, name):
    # The K-quants Q2_K .. Q6_K, IQ1-IQ4 and MXFP4 are read; TQ1_0 / TQ2_0 and Q8_K are not. The
    # tiny model has no row of 256 weights (a K-quant block), so retype a tensor after loading:
    # the check that runs on every model tensor must name it and its type.
    from dataclasses import replace
    from forgert.tensor_check import core_tensors
    m = load_model(tiny.path("gguf-F32"))
    weights = dict(m.weights)
    weights["blk.1.ffn_up.weight"] = replace(weights["blk.1.ffn_up.weight"], type_id=type_id)
    with pytest.raises(ModelFormatError,
                       match=rf"tensor 'blk\.1\.ffn_up\.weight' has type {name}, which forgert does not support"):
        core_tensors(m.config, weights, m.name)


def test_k_quant_rows_must_be_whole_super_blocks(tiny, tmp_path):
    """A Q4_K tensor whose rows are not a multiple of 256 weights is refused by name. gguf's writer
    cannot write one, so write a valid [rows, 256] tensor and patch its header to 128 columns."""
    gguf = pytest.importorskip("gguf")
    name = "blk.0.ffn_up.weight"
    rows = tiny.spec.ffn
    raw = np.zeros((rows, 144), np.uint8)
    p = gguf_variant(tiny, tmp_path / "m.gguf", raw_overrides={name: (raw, gguf.GGMLQuantizationType.Q4_K)})
    data = bytearray(p.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)           # then n_dims (u32), ne[0] (u64), ne[1] (u64)
    assert struct.unpack_from("<IQ", data, at) == (2, 256)
    struct.pack_into("<Q", data, at + 4, 128)
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=rf"tensor '{re.escape(name)}' of type Q4_K has 128 columns, "
                                               r"not a multiple of its block size 256"):
        load_model(p)


def _meta_variant(tm, path, edit, types=None):
    """Rewrite the tiny F32 GGUF with its metadata dict changed in place by edit(meta); types:
    {key: GGUFValueType, or (ARRAY, item type)} for values whose type changes."""
    gguf = pytest.importorskip("gguf")
    from forgert.gguf import GGUFFile
    src = GGUFFile(tm.path("gguf-F32"))
    meta = dict(src.metadata)
    edit(meta)
    w = gguf.GGUFWriter(str(path), meta.pop("general.architecture", "llama"))
    for k, v in meta.items():
        if k in ("general.architecture", "general.alignment"):
            continue
        vt = {**src.metadata_types, **(types or {})}.get(
            k, gguf.GGUFValueType.STRING if isinstance(v, str) else gguf.GGUFValueType.UINT32)
        if isinstance(vt, tuple):
            w.add_key_value(k, list(v), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType(vt[1]))
        else:
            w.add_key_value(k, v, gguf.GGUFValueType(vt))
    for name, info in src.tensors.items():
        data = src.tensor_data(name).view(np.float32).reshape(info.shape)
        w.add_tensor(name, np.array(data))
    return mf.write_and_close(w, path)


def test_unsupported_architecture(tiny, tmp_path):
    def edit(m):
        m["general.architecture"] = "gpt2"
    p = _meta_variant(tiny, tmp_path / "m.gguf", edit)
    with pytest.raises(ModelFormatError, match="unsupported architecture 'gpt2'"):
        load_model(p)


@pytest.mark.parametrize("arch,what", [
    ("llama-embed", r"Llama-Embed-Nemotron .LlamaBidirectionalModel., a Llama embedding model with bidirectional"),
    ("gemma-embedding", r"EmbeddingGemma, a Gemma 3 embedding model with bidirectional attention"),
    ("granite_swa", r"Granite with sliding-window attention layers, attention sinks"),
    ("gemma4-assistant", r"Gemma 4's speculative-decoding assistant"),
])
def test_llama_cpp_architectures_near_supported_ones_are_named(tiny, tmp_path, arch, what):
    """llama.cpp's architectures beside families forgert runs (src/llama-arch.cpp) whose math it
    does not compute are refused saying what they are, not as an unknown name."""
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.update({"general.architecture": arch}))
    with pytest.raises(ModelFormatError, match=rf"architecture '{arch}' is not supported: {what}"):
        load_model(p)


def test_bidirectional_attention_gguf_is_refused(tiny, tmp_path):
    """{arch}.attention.causal false (llama.cpp's hparams.causal_attn: an encoder or embedding
    model's bidirectional attention) is refused; forgert ran it causally."""
    gguf = pytest.importorskip("gguf")
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.update({"llama.attention.causal": False}),
                      types={"llama.attention.causal": gguf.GGUFValueType.BOOL})
    with pytest.raises(ModelFormatError, match=r"metadata 'llama.attention.causal' is False: bidirectional attention "
                                               r"\(an encoder / embedding model\) is not supported"):
        load_model(p)
    ok = _meta_variant(tiny, tmp_path / "ok.gguf", lambda m: m.update({"llama.attention.causal": True}),
                       types={"llama.attention.causal": gguf.GGUFValueType.BOOL})
    assert load_model(ok).config.arch == "llama"


@pytest.mark.parametrize("arch, what", [("deepseek32", "DeepSeek V3.2"), ("glm-dsa", "GLM-5"),
                                        ("deepseek2-ocr", "DeepSeek-OCR"), ("kimi-linear", "Kimi Linear"),
                                        ("minimax-m3", "MiniMax-M3")])
def test_related_architecture_is_named_for_what_it_is(tiny, tmp_path, arch, what):
    """llama.cpp's relatives of the architectures forgert runs (deepseek2, glm4moe, minimax-m2)
    whose math differs (sparse-attention indexers, linear attention, plain attention under
    DeepSeek's experts) are refused saying what they are, not as unknown names."""
    from forgert.gguf import GGUFFile
    renamed = lambda k: arch + k[len("llama"):]   # noqa: E731

    def edit(m):
        m["general.architecture"] = arch
        for k in [k for k in m if k.startswith("llama.")]:
            m[renamed(k)] = m.pop(k)
    types = {renamed(k): t for k, t in GGUFFile(tiny.path("gguf-F32")).metadata_types.items() if k.startswith("llama.")}
    p = _meta_variant(tiny, tmp_path / "m.gguf", edit, types=types)
    with pytest.raises(ModelFormatError, match=rf"architecture '{arch}' is not supported: {what}"):
        load_model(p)


def test_per_layer_arrays_of_one_value_read_as_that_value(tiny, tmp_path):
    """llama.cpp reads feed_forward_length, head_count, head_count_kv, expert_feed_forward_length
    and expert_used_count as one value or one per layer (get_key_or_arr): an array whose layers
    agree is the same model as the scalar (the same logits); one whose layers differ is refused
    naming the key (forgert runs one width for every layer)."""
    gguf = pytest.importorskip("gguf")
    n = tiny.spec.n_layers
    keys = ("llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv")
    arr = (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32)

    def per_layer(m):
        for k in keys:
            m[k] = [m[k]] * n
    p = _meta_variant(tiny, tmp_path / "arrays.gguf", per_layer, types={k: arr for k in keys})
    import forgert
    ids = np.arange(1, 12, dtype=np.int32)
    ref = forgert.Model(str(tiny.path("gguf-F32")), backend="cpu").logits(ids)
    got = forgert.Model(str(p), backend="cpu").logits(ids)
    np.testing.assert_array_equal(got, ref)

    def differing(m):
        per_layer(m)
        m["llama.feed_forward_length"] = [m["llama.feed_forward_length"][0] * 2] + m["llama.feed_forward_length"][1:]
    p = _meta_variant(tiny, tmp_path / "differing.gguf", differing, types={k: arr for k in keys})
    with pytest.raises(ModelFormatError, match=r"metadata 'llama.feed_forward_length' differs between layers"):
        load_model(p)


def test_mmproj_file_is_named_for_what_it_is(tiny, tmp_path):
    """llama.cpp's vision projector files (arch clip) are refused as such, pointing at the
    language model's GGUF."""
    def edit(m):
        m["general.architecture"] = "clip"
    p = _meta_variant(tiny, tmp_path / "mmproj.gguf", edit)
    with pytest.raises(ModelFormatError, match="vision encoder .an mmproj file.*the model's own GGUF"):
        load_model(p)


def test_lora_adapter_gguf_is_named_for_what_it_is(tmp_path):
    """An adapter as llama.cpp's convert_lora_to_gguf.py writes it (general.type adapter, the
    adapted weights' lora_a / lora_b) is refused as an adapter, not as a model missing its
    embedding table."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "lora.gguf"), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 64), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((64, 8), np.float32))
    p = mf.write_and_close(w, tmp_path / "lora.gguf")
    with pytest.raises(ModelFormatError, match=r"lora.gguf: a lora adapter \(general.type 'adapter'\), not a model: "
                                               r"forgert does not apply adapters; merge it into its base model"):
        load_model(p)


def test_peft_adapter_directory_is_named_for_what_it_is(tmp_path):
    d = tmp_path / "my-adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8}')
    (d / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"my-adapter: a PEFT adapter \(LORA for org/base\), not a model: "
                                               r"forgert does not apply adapters; merge it"):
        load_model(d)


def test_missing_metadata(tiny, tmp_path):
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.pop("llama.block_count"))
    with pytest.raises(ModelFormatError, match="missing metadata 'llama.block_count'"):
        load_model(p)


def test_bad_metadata_value(tiny, tmp_path):
    def edit(m):
        m["llama.attention.head_count_kv"] = 3      # 4 heads are not a multiple of 3 KV heads
    p = _meta_variant(tiny, tmp_path / "m.gguf", edit)
    with pytest.raises(ModelFormatError, match="not a multiple of 3 KV heads"):
        load_model(p)


@pytest.mark.parametrize("key,match", [
    ("llama.expert_count", r"metadata 'llama\.expert_count' must be an integer >= 0, got array"),
    ("llama.rope.scaling.type", r"metadata 'llama\.rope\.scaling\.type' must be a string, got array"),
])
def test_scalar_metadata_given_as_an_array(tiny, tmp_path, key, match):
    """An array where a scalar goes is refused by name (it was NumPy's "truth value of an array
    with more than one element is ambiguous")."""
    gguf = pytest.importorskip("gguf")
    t = gguf.GGUFValueType
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.update({key: [1, 2]}), types={key: (t.ARRAY, t.UINT32)})
    with pytest.raises(ModelFormatError, match=match):
        load_model(p)


def test_unknown_pre_tokenizer(tiny, tmp_path):
    def edit(m):
        m["tokenizer.ggml.pre"] = "made-up"
    p = _meta_variant(tiny, tmp_path / "m.gguf", edit)
    with pytest.raises(ModelFormatError, match="pre-tokenizer 'made-up'"):
        load_model(p)


@pytest.mark.parametrize("key,value,vtype,match", [
    ("tokenizer.ggml.add_bos_token", "yes", "STRING", r"add_bos_token = 'yes' is not a bool"),
    ("tokenizer.ggml.add_bos_token", [1, 0], "UINT8", r"add_bos_token = array\(\[1, 0\].* is not a bool"),
    ("tokenizer.ggml.add_eos_token", 1, "UINT32", r"add_eos_token = 1 is not a bool"),
    ("tokenizer.ggml.token_type", [1, 1, 3], "INT32", r"token_type has 3 entries for 320 tokens"),
    ("tokenizer.ggml.token_type", "normal", "STRING", r"token_type has a str for 320 tokens"),
    ("tokenizer.ggml.token_type", [1] * 7 + [129] + [1] * 312, "INT32", r"token_type\[7\] = 129 is not a token type"),
])
def test_tokenizer_metadata_of_the_wrong_type(tiny, tmp_path, key, value, vtype, match):
    """Tokenizer flags that are not bools and a token_type table not one valid type per token are
    refused by name (an array flag raised NumPy's "truth value ... is ambiguous"; a short token_type table
    silently dropped the control tokens past its end)."""
    gguf = pytest.importorskip("gguf")
    t = gguf.GGUFValueType
    vt = (t.ARRAY, t[vtype]) if isinstance(value, list) else t[vtype]
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.update({key: value}), types={key: vt})
    with pytest.raises(ModelFormatError, match=match):
        load_model(p)


def test_truncated_gguf(tiny, tmp_path):
    data = tiny.path("gguf-Q8_0").read_bytes()
    p = tmp_path / "m.gguf"
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFormatError, match=r"m\.gguf: truncated: tensor '.*' needs bytes"):
        load_model(p)


def test_not_a_model(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_model(p)
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model(tmp_path / "nope.gguf")


# ------------------------------------------------------------------------------ HF directories

def hf_copy(tm, tmp_path, dtype="F32"):
    d = tmp_path / "hf"
    shutil.copytree(tm.path(f"hf-{dtype}"), d)
    return d


def test_hf_missing_config(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="config.json not found"):
        load_model(d)


def test_directory_of_gguf_files_names_them(tiny, tmp_path):
    """A directory holding a .gguf (no config.json) says to pass the file, not 'config.json not found'."""
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(tiny.path("gguf-F32"), d / "m.gguf")
    with pytest.raises(ModelFormatError, match=r"models: a directory of GGUF files \(m\.gguf\), not a Hugging "
                                               r"Face model directory: pass the path of the \.gguf file"):
        load_model(d)


def test_hf_no_safetensors(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no .safetensors files"):
        load_model(d)


def test_hf_truncated_safetensors(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: truncated: tensor '.*' needs bytes"):
        load_model(d)


def test_hf_header_larger_than_file(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelFormatError, match="header length"):
        load_model(d)


def test_hf_header_not_json(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(d)


def test_hf_unsupported_dtype(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    header = json.dumps({"model.norm.weight": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ModelFormatError, match="dtype I64"):
        load_model(d)


@pytest.mark.parametrize("quant,method", [({"quant_method": "gptq", "bits": 4}, "'gptq'"),
                                          ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "'fp8'"),
                                          ({"bits": 4}, "'unknown'")])
def test_hf_quantized_checkpoint_is_refused_by_its_method(tiny, tmp_path, quant, method):
    d = hf_copy(tiny, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = quant
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=f"quantized \\(quantization_config quant_method {method}\\).*a GGUF"):
        load_model(d)


def test_hf_unsupported_model_type(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="unsupported model_type 'gpt_neox'"):
        load_model(d)


def test_hf_wrong_config_shape(tiny, tmp_path):
    d = hf_copy(tiny, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError,
                       match=r"'blk\.0\.ffn_gate\.weight' has shape \(160, 64\), expected \(128, 64\)"):
        load_model(d)


def test_hf_head_count_beyond_bounds(tiny, tmp_path):
    """2**22 + 1 heads of 1024 (the q_dim that wrapped to 1024 in the core's int arithmetic) is
    refused by name before any size is computed from it."""
    d = hf_copy(tiny, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(num_attention_heads=2**22 + 1, num_key_value_heads=1, head_dim=1024)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="'num_attention_heads' = 4194305 is more than"):
        load_model(d)


def test_gguf_layer_count_beyond_bounds(tiny, tmp_path):
    def edit(m):
        m["llama.block_count"] = 5000
    p = _meta_variant(tiny, tmp_path / "m.gguf", edit)
    with pytest.raises(ModelFormatError, match="'llama.block_count' = 5000 is more than the number of tensors"):
        load_model(p)


@pytest.mark.parametrize("field, value, limit", [("n_layers", 1025, 1024), ("vocab", 2**24 + 1, 2**24),
                                                 ("n_heads", 4097, 4096)])
def test_config_beyond_the_cores_bounds(field, value, limit):
    """A header the file could hold (a file of many GB) but the core refuses is refused by the
    loader first, by name: the same bounds as ModelConfig::validate."""
    from forgert.config import ModelConfig, _check_bounds
    cfg = ModelConfig(arch="llama", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
                      vocab=320, context_length=64, rms_eps=1e-5, rope_theta=1e4, rope_neox=False)
    setattr(cfg, field, value)
    with pytest.raises(ModelFormatError, match=f"{field} = {value} exceeds forgert's limit of {limit}"):
        _check_bounds(cfg, "big.gguf")


@pytest.mark.parametrize("filename", ["config.json", "tokenizer_config.json", "generation_config.json"])
def test_hf_json_that_is_not_an_object(tiny, tmp_path, filename):
    d = hf_copy(tiny, tmp_path)
    (d / filename).write_text("[1, 2]")
    with pytest.raises(ModelFormatError, match=rf"hf/{re.escape(filename)}: not a JSON object \(it holds a list\)"):
        load_model(d)


@pytest.mark.parametrize("key,value,match", [
    ("model_type", ["llama"], r"model_type must be a string, got \['llama'\]"),
    ("rope_scaling", 2.0, "rope_scaling must be a JSON object, got 2.0"),
    ("rope_parameters", "default", "rope_parameters must be a JSON object, got 'default'"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": float("nan")}, "rope_theta must be a positive number, got nan"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": True}, "rope_theta must be a positive number, got True"),
])
def test_hf_config_values_of_the_wrong_type(tiny, tmp_path, key, value, match):
    """Values of the wrong JSON type are refused by name (they raised AttributeError / TypeError,
    or a NaN rope_theta loaded)."""
    d = hf_copy(tiny, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=match):
        load_model(d)


def test_hf_overlapping_tensors(tiny, tmp_path):
    """A header whose data_offsets make one tensor read another's bytes is refused (it loaded,
    computing with the embedding's bytes as the norm's weights)."""
    d = hf_copy(tiny, tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8:8 + n])
    header["model.norm.weight"]["data_offsets"] = [0, 4 * tiny.spec.hidden]
    hb = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: tensors '.*' and '.*' overlap"):
        load_model(d)


def test_hf_bos_id_beyond_the_vocabulary(tiny, tmp_path):
    """A bos_token_id the tokenizer does not have is refused at load, not met as an engine error
    on the first text prompt."""
    d = hf_copy(tiny, tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 99999}))
    with pytest.raises(ModelFormatError, match="bos_token_id 99999 is not a token id below 320"):
        load_model(d)


def test_hf_missing_tensor(qwen, tmp_path):
    from safetensors.numpy import load_file, save_file
    d = hf_copy(qwen, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.layers.1.self_attn.k_proj.bias"]
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="missing tensor 'blk.1.attn_k.bias'"):
        load_model(d)


# ------------------------------------------------------------------------------ requests

@pytest.fixture(scope="module")
def model(tiny):
    import forgert
    return forgert.Model(tiny.path("gguf-F32"), n_ctx=16)


@pytest.mark.parametrize("bad,match", [
    ([5, 320], r"prompt\[1\] = 320 is out of range: token ids are 0\.\.319"),
    ([-1], "out of range"),
    ([1.5], "not an integer"),
    ([], "empty"),
])
def test_bad_token_ids(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.generate(bad, max_tokens=2)


def test_bad_ids_for_logits_and_detokenize(model):
    with pytest.raises(ValueError, match="out of range"):
        model.logits([0, 1000])
    with pytest.raises(ValueError, match="out of range"):
        model.detokenize([1000])


def test_ids_only_arguments_do_not_offer_a_str(model):
    """logits() and detokenize() take token ids only: their TypeError does not say a str would do."""
    with pytest.raises(TypeError, match="^ids must be a list of token ids, got str$"):
        model.logits("hello")
    with pytest.raises(TypeError, match="^ids must be a list of token ids, got str$"):
        model.detokenize("hello")
    with pytest.raises(TypeError, match="^prompt must be a str or a list of token ids, got NoneType$"):
        model.generate(None)


def test_lone_surrogate_in_text(model):
    """A str with a lone surrogate (say from bytes decoded with errors="surrogateescape") is a
    ValueError naming it, not tokenizers' "TextInputSequence must be str" about a str."""
    for call in (model.tokenize, lambda text: model.generate(text, max_tokens=1)):
        with pytest.raises(ValueError, match=r"lone surrogate '\\udcff' at index 2"):
            call("ab\udcff c")


def test_top_k_beyond_any_vocabulary_keeps_every_token(model):
    """top_k larger than a C int (the core's type) is top_k 0, as any top_k >= the vocabulary is,
    not pybind's "incompatible constructor arguments"."""
    kw = dict(max_tokens=4, temperature=1.5, top_p=1.0, min_p=0.0, seed=3, ignore_eos=True)
    assert model.generate([2, 3], top_k=10**12, **kw).tokens == model.generate([2, 3], top_k=0, **kw).tokens


def test_prompt_longer_than_context(model):
    with pytest.raises(ValueError, match="prompt has 17 tokens but the context holds 16"):
        model.generate(list(range(2, 19)), max_tokens=1)
    with pytest.raises(ValueError, match="17 tokens do not fit the context of 16"):
        model.logits(list(range(2, 19)))


def test_generation_stops_when_the_context_is_full(model):
    prompt = list(range(2, 12))     # 10 of 16 positions
    c = model.generate(prompt, max_tokens=100, temperature=0, ignore_eos=True)
    assert c.finish_reason == "length"
    # prompt + completion fill the context and no more: 10 + 6 = 16 (OpenAI's usage count)
    assert len(c.tokens) == 6 and c.usage.total_tokens == 16
    c = model.generate(list(range(2, 18)), max_tokens=5, temperature=0, ignore_eos=True)
    assert c.finish_reason == "length" and len(c.tokens) == 0


def test_overflowed_logits_are_an_error_not_a_crash(tiny, tmp_path):
    """A model whose arithmetic overflows (here a NaN norm weight: every logit NaN) has nothing to
    sample: generate and stream raise a ValueError naming it (they used to segfault in the C++
    sampler), greedy decoding too (it used to decode token 0 on and on: test_nonfinite_logits.py),
    and the model serves the next request."""
    import forgert
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    t["output_norm.weight"] = np.full(tiny.spec.hidden, np.nan, np.float32)
    m = forgert.Model(gguf_variant(tiny, tmp_path / "m.gguf", tensors=t), n_ctx=16)
    with pytest.raises(ValueError, match=r"logits\[0\] is NaN: the model's arithmetic overflowed"):
        m.generate([2, 3, 4], max_tokens=3, seed=1)
    with pytest.raises(ValueError, match="is NaN"):
        list(m.stream([2, 3, 4], max_tokens=3, seed=1, logprobs=2))
    with pytest.raises(forgert.NonFiniteLogitsError, match=r"non-finite logits \(NaN\) at token position 2"):
        m.generate([2, 3, 4], max_tokens=2, temperature=0, ignore_eos=True)
    with pytest.raises(ValueError, match="is NaN"):
        m.generate([2, 3, 4], max_tokens=3, seed=1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=2), "top_p"), (dict(max_tokens=-3), "max_tokens"),
])
def test_bad_sampling_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate([2, 3], **kwargs)


def test_params_that_are_not_sampling_params(model):
    """A dict where SamplingParams goes is a TypeError saying what goes there (not AttributeError
    "'dict' object has no attribute 'max_tokens'")."""
    with pytest.raises(TypeError, match=r"params must be a SamplingParams \(or pass its fields as keywords\), got dict"):
        model.generate([2, 3], {"max_tokens": 2})


def test_unknown_keyword(model):
    with pytest.raises(TypeError, match="temprature"):
        model.generate([2, 3], temprature=0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(backend="tpu"), "backend"), (dict(threads=0), "threads"), (dict(n_ctx=0), "n_ctx"),
    (dict(threads=513), "threads must be an integer from 1 to 512"), (dict(threads=2**40), "threads"),
    (dict(n_ctx="big"), "n_ctx"),
])
def test_bad_model_arguments(tiny, kwargs, match):
    import forgert
    with pytest.raises(ValueError, match=match):
        forgert.Model(tiny.path("gguf-F32"), **kwargs)


def test_chat_without_template(model):
    import forgert
    with pytest.raises(forgert.ChatTemplateError, match="has no chat template"):
        model.chat([{"role": "user", "content": "hi"}])


def test_n_ctx_above_training_length_warns(tiny):
    import forgert
    with pytest.warns(UserWarning, match="trained on"):
        m = forgert.Model(tiny.path("gguf-F32"), n_ctx=tiny.spec.n_ctx * 2)
    assert m.n_ctx == tiny.spec.n_ctx * 2


# ------------------------------------------------------------------------------ prompt cache

def test_prompt_cache_reuses_the_prefix_and_matches_a_fresh_run(model, tiny):
    import forgert
    fresh = forgert.Model(tiny.path("gguf-F32"), n_ctx=16)
    a = [2, 3, 4, 5, 6]
    b = a + [7, 8]
    model.reset()
    model.generate(a, max_tokens=3, temperature=0, ignore_eos=True)
    c = model.generate(b, max_tokens=3, temperature=0, ignore_eos=True)
    assert c.timings.cached_tokens == 5 and c.timings.prompt_tokens_evaluated == 2
    assert c.tokens == fresh.generate(b, max_tokens=3, temperature=0, ignore_eos=True).tokens
    # a prompt diverging earlier re-evaluates from the divergence
    d = model.generate([2, 3, 9], max_tokens=2, temperature=0, ignore_eos=True)
    assert d.timings.cached_tokens == 2
    fresh.reset()
    assert d.tokens == fresh.generate([2, 3, 9], max_tokens=2, temperature=0, ignore_eos=True).tokens
    # logits after generation start from an empty context again
    np.testing.assert_allclose(model.logits([2, 3, 9]), fresh.logits([2, 3, 9]), rtol=1e-5, atol=1e-5)


def test_sharded_hf_dir_loads_like_the_single_file(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file
    import forgert
    d = hf_copy(tiny, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(d / fname))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = [4, 8, 15, 16, 23, 42]
    a = forgert.Model(d, n_ctx=16).logits(ids)
    b = forgert.Model(tiny.path("hf-F32"), n_ctx=16).logits(ids)
    np.testing.assert_array_equal(a, b)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="model-00002-of-00002.safetensors' listed in the index is missing"):
        load_model(d)


def test_interleaved_streams_are_refused(model):
    a = model.stream([2, 3, 4], max_tokens=3, temperature=0, ignore_eos=True)
    b = model.stream([5, 6, 7], max_tokens=3, temperature=0, ignore_eos=True)
    next(a)
    with pytest.raises(RuntimeError, match="already generating"):
        next(b)
    a.close()
    assert model.generate([5, 6, 7], max_tokens=2, temperature=0, ignore_eos=True).finish_reason == "length"


def test_kv_cache_larger_than_memory_is_refused(tiny, monkeypatch):
    """The KV cache is allocated up front: one that cannot fit is a ValueError with the
    numbers, not an out-of-memory kill: one byte short of the hand-computed size is refused,
    the exact size is accepted."""
    import forgert
    import forgert.model as fm
    path = str(tiny.path("gguf-Q8_0"))
    cfg = forgert.Model(path, backend="cpu", n_ctx=16).config
    kv_bytes = cfg.n_layers * 2 * 4096 * cfg.n_kv_heads * cfg.head_dim * 2   # hand-computed size
    monkeypatch.setattr(fm, "available_memory_bytes", lambda: kv_bytes - 1)
    with pytest.raises(ValueError, match=r"n_ctx=4096 needs a .* KV cache .* pass n_ctx <= 4095"):
        forgert.Model(path, backend="cpu", n_ctx=4096)
    monkeypatch.setattr(fm, "available_memory_bytes", lambda: kv_bytes)
    assert forgert.Model(path, backend="cpu", n_ctx=4096).n_ctx == 4096


def test_kv_cache_larger_than_memory_names_the_cli_flag(tiny, monkeypatch):
    """The same refusal through the CLI's loader speaks in CLI terms: --n-ctx, not n_ctx=."""
    import argparse
    import forgert.model as fm
    from forgert.cli.common import UserError, load_model
    path = str(tiny.path("gguf-Q8_0"))
    cfg = fm.Model(path, backend="cpu", n_ctx=16).config
    kv_bytes = cfg.n_layers * 2 * 4096 * cfg.n_kv_heads * cfg.head_dim * 2
    monkeypatch.setattr(fm, "available_memory_bytes", lambda: kv_bytes - 1)
    args = argparse.Namespace(model=path, backend="cpu", threads=None, n_ctx=4096)
    with pytest.raises(UserError, match=r"context of 4096 tokens .* pass --n-ctx 4095 or less"):
        load_model(args)


# ------------------------------------------------------------------------------ tensor layout

def test_tensor_layout_is_the_cores(qwen, core):
    """Python's checker and the C++ loader share _core.tensor_layout: Qwen2's q/k/v biases are
    required and it has no output bias; Llama's q/k/v/o biases are optional (llama.cpp's layout)."""
    cfg = load_model(qwen.path("gguf-F32")).config
    layout = {name: (tuple(shape), required) for name, shape, required, _ in core.tensor_layout(cfg.core_dict(16))}
    assert layout["blk.1.attn_k.bias"] == ((1, cfg.n_kv_heads * cfg.head_dim), True)
    assert "blk.0.attn_output.bias" not in layout
    cfg.arch = "llama"
    layout = {name: (tuple(shape), required) for name, shape, required, _ in core.tensor_layout(cfg.core_dict(16))}
    assert layout["blk.1.attn_k.bias"][1] is False and layout["blk.1.attn_output.bias"] == ((1, cfg.dim), False)


def test_tensor_layout_validates_the_config_first(qwen, core):
    """_core.tensor_layout bounds n_layers (ModelConfig::validate) before it builds a list from it."""
    cfg = load_model(qwen.path("gguf-F32")).config.core_dict(16)
    cfg["n_layers"] = 2 ** 30
    with pytest.raises(ValueError, match="n_layers = 1073741824"):
        core.tensor_layout(cfg)


def test_tensor_the_architecture_does_not_know_is_refused(qwen, tmp_path):
    """Qwen2 has no attention output bias: a file carrying one is refused by name, not run
    without it (which would compute another model than the file describes)."""
    t = dict(mf.gguf_tensors(qwen.model, qwen.spec))
    t["blk.0.attn_output.bias"] = np.ones(qwen.spec.hidden, np.float32)
    p = gguf_variant(qwen, tmp_path / "m.gguf", tensors=t)
    with pytest.raises(ModelFormatError, match=r"m\.gguf: unexpected tensor 'blk\.0\.attn_output\.bias' "
                                               r"for a 2-layer qwen2 model"):
        load_model(p)


def test_core_refuses_unknown_and_missing_tensors(qwen, core):
    """The C++ loader checks the same layout on its own (the _core contract has other callers
    than the loader): an unknown tensor and a missing required bias are ValueErrors naming them."""
    m = load_model(qwen.path("gguf-F32"))
    cfg = m.config.core_dict(16)
    extra = dict(m.core_tensors)
    extra["blk.0.attn_output.bias"] = (np.ones(m.config.dim, np.float32).view(np.uint8), 0, (1, m.config.dim))
    with pytest.raises(ValueError, match=r"unexpected tensor 'blk\.0\.attn_output\.bias' for a 2-layer qwen2"):
        core.Engine(cfg, extra)
    missing = {n: t for n, t in m.core_tensors.items() if n != "blk.1.attn_v.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'blk\.1\.attn_v\.bias'"):
        core.Engine(cfg, missing)


def test_rope_attn_factor_without_scaling_scales_cos_and_sin(tiny, tmp_path):
    """{arch}.rope.scaling.attn_factor beside no RoPE scaling: llama.cpp multiplies cos and sin by
    it for every scaling type (llama_context: yarn_attn_factor *= hparams.rope_attn_factor);
    forgert ignored it unless the scaling was YaRN or LongRoPE. RoPE is linear in q and k, so the
    file runs as the one with attn_q and attn_k scaled by it (Llama: no QK-norm, full rotary)."""
    gguf = pytest.importorskip("gguf")
    from forgert import Model
    a = 1.7
    p = _meta_variant(tiny, tmp_path / "m.gguf", lambda m: m.update({"llama.rope.scaling.attn_factor": a}),
                      types={"llama.rope.scaling.attn_factor": gguf.GGUFValueType.FLOAT32})
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    for name in [n for n in t if n.endswith(("attn_q.weight", "attn_k.weight"))]:
        t[name] = t[name] * np.float32(a)
    scaled = gguf_variant(tiny, tmp_path / "scaled.gguf", tensors=t)
    ids = np.random.default_rng(2).integers(0, tiny.vocab, 32)
    got, want = Model(str(p), backend="cpu").logits(ids), Model(str(scaled), backend="cpu").logits(ids)
    plain = Model(str(tiny.path("gguf-F32")), backend="cpu").logits(ids)
    err = np.abs(got - want).max() / np.abs(want).max()
    # The two routes round differently (a * w in the weights, a * cos / a * sin in RoPE), and the
    # factor sharpens attention (scores x a^2). Measured 2.4e-6 on earlier test models, 2.9e-5
    # with transformers 5.25's initialization (the same on the generic and AVX2 sets, 1264dc7 and
    # after); a missing or misapplied factor moves the logits by ~1.0 of their largest (below).
    assert err < 1e-4, err
    assert np.abs(plain - want).max() > 1e-2 * np.abs(want).max()   # the factor is visible


def test_reranker_gguf_is_named_for_what_it_is(tiny, tmp_path):
    """A classifier head (cls_out.weight: llama.cpp's converter writes Qwen3 rerankers so, with
    classifier.output_labels) is refused as such; it was 'unexpected tensor cls_out.weight'."""
    t = dict(mf.gguf_tensors(tiny.model, tiny.spec))
    t["cls_out.weight"] = np.ones((1, tiny.spec.hidden), np.float32)
    p = gguf_variant(tiny, tmp_path / "rerank.gguf", tensors=t)
    with pytest.raises(ModelFormatError, match=r"rerank.gguf: a classifier / reranker \(tensor cls_out.weight\), not a "
                                               r"language model: forgert does not run classification heads"):
        load_model(p)
