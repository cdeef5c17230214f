"""What a model's config uses beyond the plain Llama decoder, in words (`forgert info`)."""
from __future__ import annotations


def _layers(idx: list) -> str:
    return ", ".join(map(str, idx)) if len(idx) <= 8 else f"{len(idx)} layers"


def config_features(cfg) -> list[str]:
    out = []
    windows = cfg.windows()
    local = [i for i, w in enumerate(windows) if w]
    if local and len(local) == len(windows):
        out.append(f"sliding-window attention ({windows[0]} keys) in every layer")
    elif local:
        out.append(f"sliding-window attention ({max(windows)} keys) in layers {_layers(local)}, "
                   f"full attention in the other {len(windows) - len(local)}")
    if cfg.layer_rope is not None and cfg.rope_freqs is not None and cfg.rope_freqs.ndim == 2:
        out.append(f"{cfg.rope_freqs.shape[0]} RoPE tables (local / global layers)")
    if cfg.ffn_act == "gelu_tanh":
        out.append("GeGLU feed-forward (tanh GELU)")
    if cfg.embed_scale != 1.0:
        out.append(f"embeddings scaled by {cfg.embed_scale:g}")
    if cfg.attn_scale:
        out.append(f"attention scale {cfg.attn_scale:.6g}")
    if cfg.attn_softcap:
        out.append(f"attention-logit soft-capping {cfg.attn_softcap:g}")
    if cfg.final_softcap:
        out.append(f"final-logit soft-capping {cfg.final_softcap:g}")
    if cfg.arch in ("gemma2", "gemma3"):
        out.append("post-attention and post-feed-forward norms")
    if cfg.arch == "gemma3":
        out.append("QK-norm")
    return out
