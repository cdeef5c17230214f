"""Corrupted model files never crash forgert: a GGUF with random bytes changed in its header,
metadata or tensor table, or cut short anywhere (and likewise a safetensors directory's header
and config.json), either loads (the damage hit only weight values or a key nobody reads) and
runs, or raises ValueError (ModelFormatError) naming the file. The mutations run in a child
process, so a crash is seen as one (not as a dead pytest)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import subprocess_env

# The child: `mutate(i)` (from one of the scripts below) writes mutant i and returns the path to
# load; every mutant must load and run, or be refused with a ValueError.
CHILD_LOOP = textwrap.dedent("""
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(n):
        path = mutate(i)
        print("mutant", i, i % KINDS, flush=True)
        try:
            m = forgert.Model(path, backend="cpu", n_ctx=16)
        except ValueError:
            outcomes["refused"] += 1
            continue
        m.logits([1, 2, 3])  # a loadable mutant must also run
        outcomes["loaded"] += 1
    print("outcomes", outcomes["loaded"], outcomes["refused"], flush=True)
""")

MUTATE_GGUF = textwrap.dedent("""
    import os, random, sys, tempfile
    import forgert
    src, n = sys.argv[1], int(sys.argv[2])
    data = open(src, "rb").read()
    rng = random.Random(1234)
    # where the interesting bytes are: the header + metadata + tensor table come first
    table_end = min(len(data), 1 << 16)
    out = os.path.join(tempfile.mkdtemp(), "mutant.gguf")
    KINDS = 3

    def mutate(i):
        b = bytearray(data)
        kind = i % KINDS
        if kind == 0:            # flip a few bytes of the header / metadata / tensor table
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(table_end)] = rng.randrange(256)
        elif kind == 1:          # write a random 8-byte integer (counts, lengths, offsets, dims)
            at = rng.randrange(8, table_end - 8)
            b[at:at + 8] = rng.choice([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1, rng.getrandbits(64)]).to_bytes(8, "little")
        else:                    # cut the file short
            b = b[:rng.randrange(len(b))]
        with open(out, "wb") as f:
            f.write(b)
        return out
""")

MUTATE_SAFETENSORS = textwrap.dedent("""
    import os, random, shutil, sys, tempfile
    import forgert
    src, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(99)
    st = open(os.path.join(src, "model.safetensors"), "rb").read()
    cfg = open(os.path.join(src, "config.json"), "rb").read()
    out = tempfile.mkdtemp()
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), out)
    header_end = int.from_bytes(st[:8], "little") + 8
    KINDS = 4

    def mutate(i):
        kind = i % KINDS
        b, c = bytearray(st), bytearray(cfg)
        if kind == 0:            # printable junk in the JSON header
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(header_end)] = rng.randrange(32, 127)
        elif kind == 1:          # cut short
            b = b[:rng.randrange(len(b))]
        elif kind == 2:          # junk in config.json
            for _ in range(rng.randint(1, 3)):
                c[rng.randrange(len(c))] = rng.randrange(32, 127)
        else:                    # a random header length
            b[0:8] = rng.getrandbits(64).to_bytes(8, "little")
        open(os.path.join(out, "model.safetensors"), "wb").write(b)
        open(os.path.join(out, "config.json"), "wb").write(c)
        return out
""")


def run_mutants(mutate_script: str, src, n: int, tmp_path) -> tuple[int, int]:
    """(loaded, refused) over n mutants of src, run in a child; fails naming the mutant that crashed."""
    script = tmp_path / "fuzz.py"
    script.write_text(mutate_script + CHILD_LOOP)
    r = subprocess.run([sys.executable, str(script), str(src), str(n)], capture_output=True, text=True,
                       timeout=600, env=subprocess_env())
    last = [l for l in r.stdout.splitlines() if l.startswith("mutant")][-1:] or ["before the first mutant"]
    assert r.returncode == 0, f"crashed (exit {r.returncode}) at {last[0]}:\n{r.stderr[-3000:]}"
    loaded, refused = map(int, r.stdout.splitlines()[-1].split()[1:])
    assert loaded + refused == n
    return loaded, refused


def test_corrupted_gguf_never_crashes(tiny_models, tmp_path):
    n = 300
    _, refused = run_mutants(MUTATE_GGUF, tiny_models("llama_tied").path("gguf-Q4_1"), n, tmp_path)
    assert refused > n // 3   # most damage is noticed, not silently run


def test_corrupted_safetensors_dir_never_crashes(tiny_models, tmp_path):
    n = 200
    _, refused = run_mutants(MUTATE_SAFETENSORS, tiny_models("llama_tied").path("hf-F32"), n, tmp_path)
    assert refused > n // 2


def test_corrupted_latent_attention_gguf_never_crashes(tmp_path, tiny_tokenizer):
    """The same for a tiny DeepSeek V3 GGUF (deepseek2: latent attention whose per-head k_b / v_b
    mla.py builds from the file's attn_kv_b, the sigmoid router with groups, an MTP block), whose
    loading reads more of the metadata and dequantizes a tensor on the host."""
    import routed_moe_factory as rmf
    model = rmf.build("deepseek-v3", tiny_tokenizer.get_vocab_size())
    hf_dir = rmf.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    path = rmf.write_gguf(hf_dir, tmp_path / "ds.gguf", "Q8_0", "deepseek2", model.config, tiny_tokenizer)
    n = 300
    _, refused = run_mutants(MUTATE_GGUF, path, n, tmp_path)
    assert refused > n // 3


def test_corrupted_recurrent_gguf_never_crashes(tmp_path, tiny_tokenizer):
    """The same for a tiny Qwen3.5-MoE GGUF (qwen35moe: Gated DeltaNet layers sized by the ssm.*
    keys and full_attention_interval, gated attention, experts), and for its HF directory, whose
    config's layer_types, linear_* widths and conv1d shape decide the recurrent layers."""
    import qwen35_factory as qf
    model = qf.build("qwen35moe", tiny_tokenizer.get_vocab_size())
    hf_dir = qf.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    path = qf.write_gguf(hf_dir, tmp_path / "q35.gguf", "Q8_0", "qwen35moe", model.config, tiny_tokenizer)
    n = 300
    _, refused = run_mutants(MUTATE_GGUF, path, n, tmp_path)
    assert refused > n // 3
    _, refused = run_mutants(MUTATE_SAFETENSORS, hf_dir, 200, tmp_path)
    assert refused > 200 // 2


def test_corrupted_fused_recurrent_gguf_never_crashes(tmp_path, tiny_tokenizer):
    """The same for a tiny Qwen3-Next GGUF in the older layout (qwen3next: ssm_in and ssm_ba, fused
    per key head, whose rows are gathered at load by the ssm.* widths), and for its HF directory
    (in_proj_qkvz, in_proj_ba)."""
    import qwen3next_factory as q3n
    model = q3n.build("qwen3next", tiny_tokenizer.get_vocab_size())
    hf_dir = q3n.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    path = q3n.write_gguf(hf_dir, tmp_path / "q3n.gguf", "Q8_0", "qwen3next", model.config, tiny_tokenizer,
                          legacy=True)
    n = 300
    _, refused = run_mutants(MUTATE_GGUF, path, n, tmp_path)
    assert refused > n // 3
    _, refused = run_mutants(MUTATE_SAFETENSORS, hf_dir, 200, tmp_path)
    assert refused > 200 // 2


def test_corrupted_short_conv_gguf_never_crashes(tmp_path, tiny_tokenizer):
    """The same for a tiny LFM2 GGUF, whose layer pattern is read from a per-layer head_count_kv
    array and whose convolution width from shortconv.l_cache."""
    import lfm2_factory as lf
    model = lf.build("lfm2", tiny_tokenizer.get_vocab_size())
    hf_dir = lf.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    path = lf.write_gguf(hf_dir, tmp_path / "lfm2.gguf", "Q8_0", "lfm2", model.config, tiny_tokenizer)
    n = 300
    _, refused = run_mutants(MUTATE_GGUF, path, n, tmp_path)
    assert refused > n // 3

