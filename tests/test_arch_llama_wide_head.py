"""Llama (GGUF arch `llama`, HF `llama`) whose heads are wider than hidden / heads, as Mistral NeMo,
Mistral Small 3 and Ministral write it (GGUF attention.key_length, HF head_dim): a tiny random
model with 4 heads of 32 over a hidden size of 64, as an HF directory and as GGUF, against
transformers."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("llama_wide_head")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_gguf_writes_the_wide_heads(tm):
    """The factory's GGUF carries key_length as the converter writes it (read by the gguf package),
    and forgert's info names the q width."""
    import gguf
    import forgert
    r = gguf.GGUFReader(str(tm.gguf_files["F32"]))
    assert int(r.fields["llama.attention.key_length"].parts[-1][0]) == 32
    assert "head_dim 32 (q width 128 != dim 64)" in forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
