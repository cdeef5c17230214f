"""EXAONE 3 / 3.5 (GGUF arch `exaone`, HF `exaone`: EXAONE-3.5 2.4B-32B, EXAONE Deep): Llama with
RoPE over the two halves of each head (llama.cpp's NEOX type), whose HF checkpoints keep their
own GPT-2-like tensor names (transformer.h.N.attn.attention.q_proj, mlp.c_fc_0, ...) and config
keys (num_layers, layer_norm_epsilon). A tiny random model (transformers runs it as Llama and saves
EXAONE's names) as an HF directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import json

import arch_e2e as ae

tm, reference = ae.model_fixtures("exaone")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_hf_dir_has_exaones_names(tm):
    from safetensors import safe_open
    with safe_open(str(tm.path("hf-F32") / "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert "transformer.h.0.attn.attention.q_proj.weight" in names and "transformer.h.1.mlp.c_fc_0.weight" in names


def test_hub_config_keys(forgert, tm, reference, tmp_path):
    """The Hub's configs say num_layers and layer_norm_epsilon (transformers' attribute_map)."""
    import shutil
    import model_factory as mf
    d = tmp_path / "hub"
    shutil.copytree(tm.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layers"], cfg["layer_norm_epsilon"] = cfg.pop("num_hidden_layers"), cfg.pop("rms_norm_eps")
    (d / "config.json").write_text(json.dumps(cfg))
    ids = ae.token_ids(tm, 32, 5)
    ae.compare_logits(forgert.Model(str(d), backend="cpu").logits(ids), mf.reference_logits(reference("hf-F32"), ids),
                      **ae.bounds_for("hf-F32", 32), what="exaone hub config")
