"""Open a model (a GGUF file or an HF directory) into config + zero-copy tensors + tokenizer."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import gemma3n, gemma4, lfm2, mamba2, nemotron_h, qwen3next
from .deltanet import recurrent_tensors
from .chat_templates import gguf_chat_templates, hf_chat_templates
from .config import ModelConfig, TensorCensus, config_from_gguf, config_from_hf
from .errors import ModelFormatError
from .fused_tensors import split_fused
from .ggml_types import F32
from .mla import LATENT_SOURCE_TENSORS, latent_attention_tensors
from .gguf import GGUFFile
from .gguf_split import GGUFSplit, open_gguf
from .safetensors_dir import HFModelDir
from .gemma import GEMMA_ARCHS, embedding_scale
from .tensor_check import core_tensors, shift_norms
from .tokenizer import ModelTokenizer
from .weights import WeightTensor

# llama.cpp's names for a multimodal encoder's tensors (its mmproj files): vision, projector, audio
_GGUF_ENCODER_PREFIXES = ("v.", "mm.", "a.")
# Consumed by the config, not the core: RoPE divisors (llama3's, LongRoPE's long and short sets).
_GGUF_EXTRA_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
# Layer tensors some architectures' files name otherwise than the canonical layout: Seed-OSS's
# feed-forward norm is llama.cpp's post_attention_norm (the norm after attention, before the MLP).
# GLM-4.5's likewise.
_GGUF_LAYER_RENAMES = {"seed_oss": {"post_attention_norm.weight": "ffn_norm.weight"},
                       "glm4moe": {"post_attention_norm.weight": "ffn_norm.weight"},
                       "qwen35": {"post_attention_norm.weight": "ffn_norm.weight"},
                       "qwen35moe": {"post_attention_norm.weight": "ffn_norm.weight"},
                       "qwen3next": {"post_attention_norm.weight": "ffn_norm.weight"}}


def _canonical_layer_names(arch: str, weights: dict, source: str) -> dict:
    """weights with the arch's layer tensors under their canonical names (_GGUF_LAYER_RENAMES)."""
    renames = _GGUF_LAYER_RENAMES.get(arch)
    if not renames:
        return weights
    out = {}
    for name, t in weights.items():
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in renames:
            new = f"blk.{parts[1]}.{renames[parts[2]]}"
            if new in weights:
                raise ModelFormatError(f"{source}: tensor '{new}' given beside '{name}', which {arch} names it")
            name = new
        out[name] = t
    return out


def _settings_from_tensors(cfg: ModelConfig, weights: dict) -> None:
    """What a GGUF says by its tensors rather than its keys, as llama.cpp reads it: GLM-4.5's
    optional QK-norm (GLM-4.5 has it, GLM-4.5-Air not) and ERNIE 4.5 MoE's optional selection bias."""
    if cfg.arch == "glm4moe":
        cfg.qk_norm_of_file = "head" if "blk.0.attn_q_norm.weight" in weights else "none"
    if cfg.arch in ("ernie4_5-moe", "deepseek2"):   # DeepSeek V3's files have it, V2's not
        cfg.router_select_bias = any(name.endswith(".exp_probs_b.bias") for name in weights)


def _refuse_mtp_only(cfg: ModelConfig, weights: dict, name: str) -> None:
    """llama.cpp reads a GGUF that holds only the multi-token-prediction layers (its nextn blocks,
    no blk.0: a draft head for its MTP speculative decoding, loaded beside the model); forgert runs
    the model's own layers, which such a file has not."""
    if cfg.mtp_layers and not any(n.startswith("blk.0.") for n in weights) \
            and any(n.startswith(f"blk.{cfg.n_layers}.") for n in weights):
        raise ModelFormatError(f"{name}: holds only the multi-token-prediction layers (nextn_predict_layers "
                               f"{cfg.mtp_layers}: blk.{cfg.n_layers}.*, no blk.0.*), a draft head for "
                               f"llama.cpp's MTP speculative decoding, not the model; pass the model's own GGUF")


def _without_mtp(cfg: ModelConfig, weights: dict) -> dict:
    """weights without the multi-token-prediction layers after the model's own (blk.N.* for N in
    n_layers .. n_layers + mtp_layers - 1: GLM-4.5's nextn block, its attention, experts and
    nextn.* tensors), which forgert does not run."""
    if not cfg.mtp_layers:
        return weights
    mtp = {str(i) for i in range(cfg.n_layers, cfg.n_layers + cfg.mtp_layers)}
    return {n: w for n, w in weights.items() if not (n.startswith("blk.") and n.split(".", 2)[1] in mtp)}


def gguf_layer_name(arch: str, name: str) -> str:
    """The name llama.cpp's GGUF of `arch` gives canonical tensor `name` (_GGUF_LAYER_RENAMES
    reversed): what `forgert quantize` writes for an HF source."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk":
        for file_name, canonical in _GGUF_LAYER_RENAMES.get(arch, {}).items():
            if parts[2] == canonical:
                return f"blk.{parts[1]}.{file_name}"
    return name


@dataclass
class LoadedModel:
    path: str
    name: str
    format: str                      # "gguf" | "safetensors"
    config: ModelConfig
    weights: dict                    # canonical name -> WeightTensor (as stored in the file)
    core_tensors: dict               # canonical name -> (buffer, dtype id, (rows, cols)) for _core
    tokenizer: ModelTokenizer
    chat_template: str | None        # the default chat template
    metadata: dict = field(repr=False, default_factory=dict)
    handle: object = field(repr=False, default=None)   # keeps the mmaps alive
    files: list = field(default_factory=list)           # the files read: a split GGUF's shards, in order
    # the file's other chat templates by name ("tool_use", "rag", ...: chat_templates.py)
    named_chat_templates: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self.weights.values())

    @property
    def size_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())

    @property
    def tensor_types(self) -> dict:
        """type name -> number of tensors of that type"""
        return dict(Counter(w.type_name for w in self.weights.values()))


def _gguf_weights(g: GGUFFile | GGUFSplit) -> dict:
    out = {}
    for name, info in g.tensors.items():
        # 3-D: an expert stack (ffn_*_exps), (n_expert, rows, cols); any other 3-D tensor is
        # refused by name where the architecture's layout does not expect that shape.
        if len(info.ne) > 3:
            raise ModelFormatError(f"{g.name}: tensor '{name}' has {len(info.ne)} dimensions {list(info.ne)}")
        shape = (1, info.ne[0]) if len(info.ne) == 1 else tuple(reversed(info.ne))
        out[name] = WeightTensor(name, g.tensor_data(name), info.type_id, shape, g.name)
    return out


# GGUF architecture names that are another's loader and graph under their own name (llama.cpp's
# mistral4 is its deepseek2: src/models/mistral4.cpp): read as that one, keys renamed.
_GGUF_ARCH_ALIASES = {"mistral4": "deepseek2"}


def _read_alias_as(g) -> None:
    """Renames an aliased architecture's metadata keys (mistral4.* -> deepseek2.*) in place, so
    the config, the core and `forgert quantize` (which writes the GGUF it read) see the one
    architecture forgert implements."""
    arch = g.metadata.get("general.architecture")
    target = _GGUF_ARCH_ALIASES.get(arch)
    if target is None:
        return
    for key in [k for k in g.metadata if k.startswith(arch + ".")]:
        new = target + key[len(arch):]
        g.metadata[new], g.metadata_types[new] = g.metadata.pop(key), g.metadata_types.pop(key)
    g.metadata["general.architecture"] = target


def load_gguf(path) -> LoadedModel:
    g = open_gguf(path)   # a split model's shards together
    _read_alias_as(g)
    if g.metadata.get("general.type") == "adapter":   # llama.cpp's convert_lora_to_gguf.py writes these
        raise ModelFormatError(f"{g.name}: a {g.metadata.get('adapter.type', '')} adapter (general.type 'adapter'), "
                               "not a model: forgert does not apply adapters; merge it into its base model "
                               "(llama.cpp's llama-export-lora, or PEFT's merge_and_unload before converting)")
    weights = _gguf_weights(g)
    if "cls_out.weight" in weights:   # llama.cpp's classifier head (a reranker's: convert_hf_to_gguf.py's Qwen3 rerankers)
        labels = g.metadata.get(f"{g.metadata.get('general.architecture')}.classifier.output_labels")
        raise ModelFormatError(f"{g.name}: a classifier / reranker (tensor cls_out.weight"
                               f"{', labels ' + ', '.join(map(str, labels)) if labels is not None else ''}), not "
                               "a language model: forgert does not run classification heads")
    # A language model's GGUF that also holds its vision / audio encoder (ollama writes Gemma 3's
    # so): llama.cpp's mmproj tensors are set aside, as an HF checkpoint's vision tower is, and
    # the text runs.
    weights = {n: w for n, w in weights.items() if not n.startswith(_GGUF_ENCODER_PREFIXES)}
    embd = weights.get("token_embd.weight")
    if embd is None:
        raise ModelFormatError(f"{g.name}: missing tensor 'token_embd.weight'")
    def factors(name):
        rf = weights.get(name)
        if rf is not None and rf.type_id != F32:
            raise ModelFormatError(f"{g.name}: {name} must be F32, is {rf.type_name}")
        return None if rf is None else rf.data.view(np.float32)

    longrope = factors("rope_factors_long.weight"), factors("rope_factors_short.weight")
    if (longrope[0] is None) != (longrope[1] is None):
        raise ModelFormatError(f"{g.name}: rope_factors_long.weight and rope_factors_short.weight come as a pair; "
                               f"the file has only one")
    cfg = config_from_gguf(g.metadata, vocab=embd.shape[0], source=g.name,
                           census=TensorCensus.of(w.shape for w in weights.values()),
                           rope_factors=factors("rope_freqs.weight"),
                           longrope_factors=None if longrope[0] is None else longrope)
    cfg.tied_embeddings = "output.weight" not in weights
    _settings_from_tensors(cfg, weights)
    if cfg.arch == gemma4.GGUF_ARCH:   # --fuse-qkv's attn_qkv cut as llama.cpp's gemma4 graph views it
        weights = gemma4.split_fused_qkv(cfg, weights)
    # Gemma 4: its layer scalars go to the config, V from K where attn_v is absent
    config_tensors = gemma4.read_layer_tensors(cfg, weights, g.name) if cfg.arch == gemma4.GGUF_ARCH else ()
    if cfg.arch == gemma4.GGUF_ARCH:   # its fused gate_up expert stacks split zero-copy
        weights = gemma4.gguf_expert_stacks(weights)
    if cfg.arch in lfm2.GGUF_ARCHS:   # its final norm under llama.cpp's name for it
        weights = {lfm2.GGUF_GLOBAL_RENAMES.get(n, n): w for n, w in weights.items()}
    stored = weights   # as the file holds them (what `forgert quantize` copies): the core's view below
    if cfg.arch == gemma3n.GGUF_ARCH:   # its stacked AltUp projections split zero-copy, LAuReL's rank
        weights = gemma3n.gguf_stream_views(weights)
        gemma3n.set_gguf_shapes(cfg, weights, g.name)
    if cfg.arch in mamba2.GGUF_ARCHS + nemotron_h.GGUF_ARCHS:   # per-head A and D stored as columns
        weights = mamba2.gguf_tensors(weights)
    if cfg.arch in nemotron_h.GGUF_ARCHS:   # its blocks' tensors as the core's layers'
        weights = nemotron_h.layer_tensors(cfg, weights, g.name)
    _refuse_mtp_only(cfg, weights, g.name)
    canonical = split_fused(cfg, _canonical_layer_names(cfg.arch, _without_mtp(cfg, weights), g.name))
    tensors = core_tensors(cfg, latent_attention_tensors(cfg, canonical, g.name), g.name,
                           ignore=_GGUF_EXTRA_TENSORS + config_tensors)
    tok = ModelTokenizer.from_gguf(g.metadata, g.name)
    default_template, named_templates = gguf_chat_templates(g.metadata, g.name)
    files = [shard.path for shard in g.shards] if isinstance(g, GGUFSplit) else [g.path]
    if cfg.arch in mamba2.GGUF_ARCHS + nemotron_h.GGUF_ARCHS + (gemma3n.GGUF_ARCH,):
        weights = stored
    return LoadedModel(g.path, g.name, "gguf", cfg, weights, tensors, tok, default_template, g.metadata, g, files,
                       named_templates)


def load_hf_dir(path) -> LoadedModel:
    d = HFModelDir(path)
    source = f"{d.name}/config.json"
    try:
        cfg = config_from_hf(d.config, source, TensorCensus.of(w.shape for w in d.tensors.values()))
    except ModelFormatError:
        raise
    except (TypeError, ValueError, AttributeError, LookupError, ArithmeticError) as e:
        # a JSON value of a type or range no check names (a string where a number goes, a 0
        # divisor): still the file's problem, said as such with Python's words for it
        raise ModelFormatError(f"{source}: a setting has the wrong type or value "
                               f"({type(e).__name__}: {e})") from None
    config_tensors = gemma4.read_layer_tensors(cfg, d.tensors, d.name) if cfg.arch == gemma4.GGUF_ARCH else ()
    if cfg.arch in GEMMA_ARCHS + (gemma4.GGUF_ARCH, gemma3n.GGUF_ARCH) and "token_embd.weight" in d.tensors:
        cfg.embed_scale = embedding_scale(cfg.dim, d.tensors["token_embd.weight"].type_id)
    if cfg.ple_dim and "per_layer_token_embd.weight" in d.tensors:   # Gemma 4: sqrt(ple_dim) likewise rounded
        cfg.ple_embed_scale = embedding_scale(cfg.ple_dim, d.tensors["per_layer_token_embd.weight"].type_id)
    if cfg.norm_shift:
        d.tensors = shift_norms(d.tensors, cfg.norm_shift)
    if cfg.has_layer_kind("gated_delta_net") or cfg.has_layer_kind("mamba2"):   # A_log as the A = -exp(A_log)
        d.tensors = recurrent_tensors(d.tensors, d.name)                          # their GGUFs store
    if cfg.arch in mamba2.GGUF_ARCHS:   # Granite 4.0-H's shared MLP and grouped norm as its GGUF has them
        d.tensors = mamba2.hf_tensors(cfg, d.tensors, d.name)
    if cfg.arch in nemotron_h.GGUF_ARCHS:   # Nemotron-H's blocks' tensors as the core's layers'
        d.tensors = nemotron_h.layer_tensors(cfg, d.tensors, d.name)
    if cfg.arch == "qwen3next":   # in_proj_qkvz as the attn_qkv / attn_gate its GGUF holds; ssm_ba kept whole
        d.tensors = qwen3next.hf_tensors(cfg, d.tensors)
        d.fused |= {n for n in d.tensors if n.endswith(".ssm_ba.weight")}
    tensors = core_tensors(cfg, latent_attention_tensors(cfg, split_fused(cfg, d.tensors), d.name), d.name,
                           ignore=config_tensors)
    tok = ModelTokenizer.from_hf_dir(d)
    weights = {n: w for n, w in d.tensors.items() if n in tensors or n in d.fused or n.endswith(LATENT_SOURCE_TENSORS)}
    default_template, named_templates = hf_chat_templates(d.path, d.read_json)
    return LoadedModel(d.path, d.name, "safetensors", cfg, weights, tensors, tok, default_template, d.config, d,
                       named_chat_templates=named_templates)


def load_model(path) -> LoadedModel:
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if ggufs and not os.path.exists(os.path.join(path, "config.json")):
            raise ModelFormatError(f"{os.path.basename(os.path.normpath(path))}: a directory of GGUF files "
                                   f"({', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''}), not a Hugging "
                                   f"Face model directory: pass the path of the .gguf file")
        return load_hf_dir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path}")
    return load_gguf(path)
