"""bench/synthetic_gguf.py's deepseek2 writer: the file it writes (tiny shapes, both of its
attention and router forms) loads in forgert with the configuration the preset names and runs."""
import sys
from pathlib import Path

import numpy as np
import pytest

import forgert  # noqa: F401  (the installed one, before synthetic_gguf puts python/ on the path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import synthetic_gguf  # noqa: E402

sys.path.remove(str(Path(__file__).resolve().parents[1] / "python"))

TINY = dict(layers=3, hidden=256, heads=4, kv_lora=64, nope=32, rope=16, v=32, experts=8, used=2,
            expert_ffn=128, dense=1, dense_ffn=512, vocab=512, ctx=4096)


@pytest.mark.parametrize("base,want", [
    ("deepseek-v2-lite", ["multi-head latent attention (latent 64; heads of 32 + 16 rotated dims, values of 32)",
                          "mixture of experts: 2 of 8 experts per token (width 128), a shared expert of width 256"]),
    ("glm47-flash", ["multi-head latent attention (latent 64, query rank 96; heads of 32 + 16 rotated dims, values of 32)",
                     "sigmoid router with a selection bias"]),
])
def test_written_file_loads(forgert, tmp_path, monkeypatch, base, want):
    preset = {**synthetic_gguf.DEEPSEEK2_PRESETS[base], **TINY}
    if preset["q_lora"]:
        preset["q_lora"] = 96
    monkeypatch.setitem(synthetic_gguf.DEEPSEEK2_PRESETS, "tiny", preset)
    path = tmp_path / "tiny.gguf"
    synthetic_gguf.write(path, "tiny", "Q4_0")
    m = forgert.Model(str(path), backend="cpu", n_ctx=32)
    info = m.info()
    assert info["n_layers"] == 3
    for w in want:
        assert any(f.startswith(w) for f in info["features"]), (w, info["features"])
    assert np.isfinite(m.logits([1, 5, 9, 13])).all()
