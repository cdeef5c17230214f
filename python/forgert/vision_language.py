"""Hugging Face vision-language checkpoints whose language model forgert runs, on text.

Gemma 3 (4B-27B), Mistral Small 3.1 / 3.2, Qwen2-VL / Qwen2.5-VL, Qwen3-VL, LLaVA / LLaVA-NeXT
(Pixtral's HF form among them) and SmolVLM / Idefics3 ship one directory
holding a vision tower, a projector and a language model. The language model is an architecture
forgert runs (gemma3_text, mistral, llama, qwen2, qwen3); Qwen's multimodal RoPE gives a text token the
same position in every section, which is 1-D RoPE. So the directory runs as its language model: the
config's text part (text_config, or the top level where transformers 4 kept it there), and the
tensors under the language model's prefix renamed as a text-only checkpoint names them; the vision
tower and projector are left unread. Images need them, which forgert does not run.
"""
from __future__ import annotations

from .errors import ModelFormatError

# vision-language model_type -> the model_type its language model runs as (None: text_config's own)
LANGUAGE_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "gemma3n": "gemma3n_text", "mistral3": None, "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2",
                        "qwen3_vl": "qwen3", "qwen3_5": None, "qwen3_5_moe": None, "llava": None, "llava_next": None, "smolvlm": None, "idefics3": None}
# text_config model types renamed to the text-only architectures they are
_TEXT_TYPES = {"qwen2_vl_text": "qwen2", "qwen2_5_vl_text": "qwen2", "qwen3_vl_text": "qwen3"}
# Tensor prefixes of the language model, in transformers 4's and 5's layouts -> the text-only name's
_LANGUAGE_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                      ("language_model.lm_head.", "lm_head."), ("model.text_model.", "model."))
# Tensors of the vision side, never read
_VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.", "model.multi_modal_projector.",
                    "visual.", "model.visual.", "image_newline", "model.image_newline", "model.vision_model.",
                    "model.connector.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")
# Top-level keys that hold for the language model when text_config does not say
_SHARED_KEYS = ("tie_word_embeddings", "torch_dtype", "dtype", "bos_token_id", "eos_token_id")


def language_config(config: dict, source: str) -> dict:
    """The config.json of a LANGUAGE_MODEL_TYPES checkpoint as its language model's own, with
    "vision_language" naming the checkpoint's type."""
    vl_type = config["model_type"]
    text = config.get("text_config")
    if text is None:   # transformers 4's Qwen2-VL: the language model's keys at the top level
        text = {k: v for k, v in config.items() if k != "vision_config"}
    if not isinstance(text, dict):
        raise ModelFormatError(f"{source}: text_config must be an object")
    out = dict(text)
    for key in _SHARED_KEYS:
        if key not in out and key in config:
            out[key] = config[key]
    model_type = LANGUAGE_MODEL_TYPES[vl_type] or text.get("model_type")
    out["model_type"] = _TEXT_TYPES.get(model_type, model_type)
    out["vision_language"] = vl_type
    return out


def language_tensor_name(hf_name: str) -> str | None:
    """The text-only checkpoint's name of a language-model tensor; None for the vision side."""
    if hf_name.startswith(_VISION_PREFIXES):
        return None
    for prefix, text_prefix in _LANGUAGE_PREFIXES:
        if hf_name.startswith(prefix):
            return text_prefix + hf_name[len(prefix):]
    return hf_name
