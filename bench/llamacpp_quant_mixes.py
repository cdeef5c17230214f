"""Compare `forgert quantize` with llama.cpp's own quantizer (llama_model_quantize, what
llama-quantize calls) mix by mix: tensor types, order and identical bytes. Not run by CI (CI has
no llama.cpp); the mix table in tests/test_quantize_kquants.py and the SmolLM2 figures in
tests/test_e2e_smollm2_quantized.py were checked with it.

    cmake -S LLAMA -B LLAMA/build -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TOOLS=OFF \\
          -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
          -DLLAMA_BUILD_SERVER=OFF && cmake --build LLAMA/build --target llama
    python bench/llamacpp_quant_mixes.py LLAMA [model.gguf ...]    # default: tiny 8-layer Llamas, tied and untied,
                                                                   # and tiny MoEs: Mixtral 8 experts, Qwen3-MoE 4

Source models must be GGUFs (llama.cpp quantizes only those); quantized ones are re-quantized
(allow_requantize).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
if importlib.util.find_spec("forgert") is None:     # an installed forgert wins, as in tests/conftest.py
    sys.path.insert(0, str(REPO / "python"))

DRIVER = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char ** argv) {
    if (argc < 4) { fprintf(stderr, "usage: IN OUT FTYPE\n"); return 2; }
    llama_backend_init();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = (enum llama_ftype) atoi(argv[3]);
    p.allow_requantize = true;
    return llama_model_quantize(argv[1], argv[2], &p) != 0;
}
"""


def build_driver(llama: Path, out_dir: Path) -> Path:
    src, exe = out_dir / "quantize_driver.c", out_dir / "quantize_driver"
    src.write_text(DRIVER)
    subprocess.run(["cc", "-O1", str(src), f"-I{llama}/include", f"-I{llama}/ggml/include", f"-L{llama}/build/bin",
                    "-lllama", "-lggml", "-lggml-base", "-o", str(exe)], check=True)
    return exe


def tiny_sources(out_dir: Path) -> list:
    import model_factory as mf
    from test_quantize_kquants import SPEC_8
    tied = mf.TinySpec(name="llama_8l_tied", arch="llama", hidden=256, n_layers=8, n_heads=4, n_kv_heads=2, ffn=256,
                       tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-5, seed=22)
    dense = [mf.make_tiny_model(spec, out_dir, hf_dtypes=(), gguf_types=("F32",)).path("gguf-F32")
             for spec in (SPEC_8, tied)]
    return dense + moe_sources(out_dir)


def moe_sources(out_dir: Path) -> list:
    """8-layer MoEs with whole K-quant super-blocks: 8 experts (llama.cpp's 8-expert attn_v / attn_k /
    attn_output rules) and 4, expert stacks in llama.cpp's 3-D layout."""
    import model_factory as mf
    import moe_factory as moe
    tok = mf.build_tokenizer()
    out = []
    for name, model, arch, meta in (
            ("mixtral_8x", moe.build_mixtral(tok.get_vocab_size(), hidden=256, n_layers=8, n_heads=4, n_kv_heads=1,
                                             ffn=256, n_expert=8), "llama", {}),
            ("qwen3moe_4x", moe.build_qwen3_moe(tok.get_vocab_size(), hidden=256, n_layers=8, head_dim=64, ffn=256,
                                                moe_ffn=256, n_expert=4), "qwen3moe",
             {"add_expert_weights_norm": True})):
        hf_dir = moe.save_hf(model, tok, out_dir / name / "hf")
        out.append(moe.write_gguf(hf_dir, out_dir / f"{name}.gguf", "F32", arch, model.config, tok, extra_meta=meta))
    return out


def main() -> int:
    import gguf
    from forgert.cli import main as forgert_main
    from forgert.quant_mix import MIXES
    llama = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        driver = build_driver(llama, tmp)
        env = {**os.environ, "LD_LIBRARY_PATH": str(llama / "build/bin")}
        sources = [Path(p) for p in sys.argv[2:]] or tiny_sources(tmp)
        for src in sources:
            for mix, spec in MIXES.items():
                if mix in ("f32", "f16"):
                    continue
                theirs, ours = tmp / f"llamacpp-{mix}.gguf", tmp / f"forgert-{mix}.gguf"
                subprocess.run([str(driver), str(src), str(theirs), str(spec.file_type)], check=True, env=env,
                               capture_output=True)
                forgert_main(["quantize", str(src), str(ours), "--type", mix, "--force"])
                a, b = gguf.GGUFReader(theirs).tensors, gguf.GGUFReader(ours).tensors
                types_a = [(t.name, t.tensor_type.name) for t in a]
                types_b = [(t.name, t.tensor_type.name) for t in b]
                same_bytes = np.mean([np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8))
                                      for x, y in zip(a, b)]) if len(a) == len(b) else 0.0
                verdict = "same types and order" if types_a == types_b else \
                    f"DIFFER: {sorted(set(types_a) ^ set(types_b))[:6]}"
                print(f"{src.name} {mix:7} {verdict}; {same_bytes:.0%} of tensors byte-identical", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
