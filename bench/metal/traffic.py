"""What one decode step moves on Metal, counted by the MSL emulator's traffic build (no Mac
needed): per kernel, the device bytes it needs (distinct bytes: the floor of DRAM traffic),
the bytes its simdgroup accesses request (re-reads that a cache has to absorb), the 64-byte
line efficiency of its loads (fewest lines / lines touched, per simdgroup access), threadgroup
bank conflicts, and the step's bandwidth-bound time on Apple chips.

    python bench/metal/traffic.py                         # SmolLM2 (the default model), whole model
    python bench/metal/traffic.py --preset llama32-1b     # synthetic 1B shapes: 1- and 2-layer
                                                          # models, scaled up to all layers
    python bench/metal/traffic.py --preset llama32-1b llama3-8b --type Q4_0 --save t.json
    python bench/metal/traffic.py --preset llama3-8b --vocabs 2048 4096   # small vocabularies, scaled
    python bench/metal/traffic.py --load t.json           # the saved tables again, no emulator
    python bench/metal/traffic.py model.gguf --prompt-tokens 4

Beside each step's bandwidth-bound times stand llama.cpp's published Apple-silicon decode
speeds (LLAMACPP_TG128) and the bandwidth they imply, so the bound can be read against what
a mature Metal backend reaches on each chip.

The step measured is the first decode step after a short prompt (the GEMV path; a long prompt
would take the emulator minutes). The emulator counts what the CPU build of each kernel loads
(src/emulator/README.md, Traffic counting), not what Apple's compiler and caches do.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

CHIPS = {"M1": 68.25, "M2": 100.0, "M3 Max": 400.0, "M4 Max": 546.0}  # GB/s
# llama.cpp's decode tokens/s on these chips (tg128, LLaMA 7B Q4_0, whose weights are 3.56 GiB),
# as published in its Apple-silicon performance discussion (github.com/ggml-org/llama.cpp/discussions/4167).
LLAMACPP_TG128 = {"M1": 14.15, "M2": 21.91, "M3 Max": 66.3, "M4 Max": 83.06}
LLAMACPP_7B_Q4_0_BYTES = 3.56 * 2**30
FIELDS = ("read_needed", "write_needed", "read_requested", "write_requested", "load_lines64",
          "load_lines64_min", "store_lines64", "store_lines64_min", "load_lines128", "load_lines128_min",
          "tg_wavefronts", "tg_wavefronts_min")


def decode_step(model_path: str, prompt_tokens: int) -> list[dict]:
    """The dispatches of the first decode step: those after the prefill's argmax (argmax_f32, or
    argmax_partials after the output GEMV with the argmax fused on)."""
    import forgert
    from forgert import _core
    _core.set_emulator_traffic(True)
    try:
        m = forgert.Model(model_path, backend="metal")
    finally:
        _core.set_emulator_traffic(False)
    _core.emulator_traffic()
    prompt = [100 + (i * 7919) % max(1, m.vocab_size - 200) for i in range(prompt_tokens)]
    m.generate(prompt, max_tokens=2, temperature=0.0, ignore_eos=True)
    log = _core.emulator_traffic()
    ends = [i for i, d in enumerate(log) if d["kernel"].startswith("argmax")]
    if len(ends) != 2:
        raise SystemExit(f"expected a prefill and a decode step ending in argmax, got {len(ends)} argmax dispatches")
    return log[ends[0] + 1:ends[1] + 1]


def by_kernel(step: list[dict], scale=lambda name: 1.0) -> dict[str, collections.Counter]:
    out: dict[str, collections.Counter] = {}
    for d in step:
        c = out.setdefault(d["kernel"], collections.Counter())
        c["dispatches"] += 1
        for f in FIELDS:
            c[f] += d[f]
        c["tg_memory"] = max(c["tg_memory"], d["threadgroup_memory"])
        c["threads"] = max(c["threads"], d["threads_per_threadgroup"])
    return out


def weights_read(path: str) -> tuple[int, int]:
    """(bytes of weights one decode step reads: every tensor but the embedding table, of which one
    row, unless the output layer is tied to it; file size)."""
    from forgert.gguf import GGUFFile
    g = GGUFFile(path)
    tensors = {t.name: t for t in (g.tensors.values() if isinstance(g.tensors, dict) else g.tensors)}
    total = sum(t.nbytes for t in tensors.values())
    embd = tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in tensors:
        total -= embd.nbytes - embd.nbytes // embd.shape[0]
    return total, os.path.getsize(path)


def ratio(a, b):
    return a / b if b else 1.0


def table(rows: dict[str, collections.Counter], title: str) -> tuple[list[str], int, int]:
    out = [f"### {title}", "",
           "| kernel | dispatches | needed MB | requested MB | req/need | load lines 64 B | load lines 128 B "
           "| store lines 64 B | tg conflicts | tg mem B | threads |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tot = collections.Counter()
    for name, c in sorted(rows.items(), key=lambda kv: -(kv[1]["read_needed"] + kv[1]["write_needed"])):
        need = c["read_needed"] + c["write_needed"]
        req = c["read_requested"] + c["write_requested"]
        tot.update({k: v for k, v in c.items() if k not in ("tg_memory", "threads")})
        conflicts = ratio(c["tg_wavefronts"], c["tg_wavefronts_min"])
        out.append(f"| {name} | {c['dispatches']:g} | {need / 1e6:.3f} | {req / 1e6:.3f} | {ratio(req, need):.2f} "
                   f"| {100 * ratio(c['load_lines64_min'], c['load_lines64']):.0f}% "
                   f"| {100 * ratio(c['load_lines128_min'], c['load_lines128']):.0f}% "
                   f"| {100 * ratio(c['store_lines64_min'], c['store_lines64']):.0f}% "
                   f"| {'-' if not c['tg_wavefronts'] else f'{conflicts:.2f}x'} | {c['tg_memory']} | {c['threads']} |")
    need = tot["read_needed"] + tot["write_needed"]
    req = tot["read_requested"] + tot["write_requested"]
    out.append(f"| **step** | {tot['dispatches']:g} | {need / 1e6:.3f} | {req / 1e6:.3f} | {ratio(req, need):.2f} "
               f"| {100 * ratio(tot['load_lines64_min'], tot['load_lines64']):.0f}% "
               f"| {100 * ratio(tot['load_lines128_min'], tot['load_lines128']):.0f}% "
               f"| {100 * ratio(tot['store_lines64_min'], tot['store_lines64']):.0f}% | | | |")
    return out + [""], need, req


def scaled(one: dict, two: dict, layers: int) -> dict:
    """A step of `layers` layers from steps of 1 and 2: one + (layers - 1) x (two - one)."""
    out = {}
    for name in set(one) | set(two):
        a, b = one.get(name, collections.Counter()), two.get(name, collections.Counter())
        c = collections.Counter()
        for k in set(a) | set(b):
            if k in ("tg_memory", "threads"):
                c[k] = max(a[k], b[k])
            else:
                c[k] = a[k] + (layers - 1) * (b[k] - a[k])
        out[name] = c
    return out


def combined(base: dict, parts: list[tuple[float, dict, dict]]) -> dict:
    """base + sum of f x (b - a) over parts (f, a, b), kernel by kernel; maxima stay maxima."""
    out = {name: collections.Counter(c) for name, c in base.items()}
    for f, a, b in parts:
        for name in set(a) | set(b):
            c = out.setdefault(name, collections.Counter())
            ca, cb = a.get(name, collections.Counter()), b.get(name, collections.Counter())
            for k in set(ca) | set(cb):
                if k in ("tg_memory", "threads"):
                    c[k] = max(c[k], ca[k], cb[k])
                else:
                    c[k] += f * (cb[k] - ca[k])
    return out


def measure_preset(preset: str, wtype: str, prompt_tokens: int, vocabs: list[int] | None = None) -> dict:
    """One decode step of a synthetic model of all `preset`'s layers: measured on 1- and 2-layer
    models (the emulator is too slow for all layers), scaled as one + (layers - 1) x (two - one).
    With vocabs (V1, V2), the models have those small vocabularies and the output layer, argmax
    and logits are scaled to the preset's: + (V - V1) / (V2 - V1) x (1 layer at V2 - 1 layer at V1),
    exact for what grows linearly with the vocabulary (every count here does)."""
    import forgert  # noqa: F401  the installed package (with _core), before synthetic_gguf adds ../python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import synthetic_gguf as sg
    layers, hidden, ffn, heads, kv_heads, vocab, ctx = sg.PRESETS[preset]
    v1, v2 = vocabs or (vocab, vocab)

    def run(n_layers, n_vocab, tmp):
        name = f"{preset}-{n_layers}l-v{n_vocab}"
        sg.PRESETS[name] = (n_layers, hidden, ffn, heads, kv_heads, n_vocab, ctx)
        path = os.path.join(tmp, name + ".gguf")
        sg.write(Path(path), name, wtype)
        return by_kernel(decode_step(path, prompt_tokens)), weights_read(path)[0]

    with tempfile.TemporaryDirectory() as tmp:
        (one, w_one), (two, w_two) = run(1, v1, tmp), run(2, v1, tmp)
        rows = scaled(one, two, layers)
        weights = w_one + (layers - 1) * (w_two - w_one)
        how = f"{layers} layers scaled from measured 1- and 2-layer models"
        if v1 != vocab:
            wide, w_wide = run(1, v2, tmp)
            f = (vocab - v1) / (v2 - v1)
            rows = combined(rows, [(f, one, wide)])
            weights += f * (w_wide - w_one)
            how += f", vocabulary {vocab} scaled from measured {v1} and {v2}"
    return {"title": f"{preset} {wtype} (synthetic; {how}), decode step after {prompt_tokens} prompt tokens",
            "rows": rows, "weights": weights}


def measure_model(path: str | None, prompt_tokens: int) -> dict:
    import forgert
    path = path or forgert.Model(None, backend="cpu").path
    return {"title": f"{os.path.basename(path)}, decode step after {prompt_tokens} prompt tokens",
            "rows": by_kernel(decode_step(path, prompt_tokens)), "weights": weights_read(path)[0]}


def report(step: dict) -> list[str]:
    rows = {name: collections.Counter(c) for name, c in step["rows"].items()}
    lines, need, req = table(rows, step["title"])
    weights = step["weights"]
    # A greedy step writes and re-reads its logits only where the argmax is not fused (argmax_f32).
    rest = "KV cache, activations, logits" if "argmax_f32" in rows else "KV cache, activations"
    lines.append(f"Weights one step must read: {weights / 1e6:.3f} MB; the step needs {need / 1e6:.3f} MB "
                 f"({100 * (need / weights - 1):+.2f}%: {rest}) and requests {req / 1e6:.3f} MB.")
    lines += ["", "| chip | GB/s | bound by needed bytes | tokens/s | bound by requested bytes | tokens/s "
              "| llama.cpp 7B Q4_0 tg128 tokens/s | its GB/s (share of peak) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for chip, gbs in CHIPS.items():
        t_need, t_req = need / (gbs * 1e9), req / (gbs * 1e9)
        lc = LLAMACPP_TG128[chip]
        lc_gbs = lc * LLAMACPP_7B_Q4_0_BYTES / 1e9
        lines.append(f"| {chip} | {gbs:g} | {1e3 * t_need:.3f} ms | {1 / t_need:.1f} | {1e3 * t_req:.3f} ms "
                     f"| {1 / t_req:.1f} | {lc:g} | {lc_gbs:.1f} ({100 * lc_gbs / gbs:.0f}%) |")
    lines += ["", "Bounds: bytes / bandwidth, nothing else (no compute, no launch gaps). llama.cpp's figures "
              "are measured on the chips (published, a 7B Q4_0 model: a different model from this one); "
              "its GB/s = tokens/s x 3.56 GiB of weights.", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="GGUF file (default: forgert's default model)")
    ap.add_argument("--preset", nargs="+", default=None,
                    help="synthetic shapes of bench/synthetic_gguf.py (llama32-1b, llama3-8b, ...)")
    ap.add_argument("--type", default="Q4_K_M", help="weight type of the synthetic models")
    ap.add_argument("--prompt-tokens", type=int, default=4)
    ap.add_argument("--vocabs", type=int, nargs=2, default=None, metavar=("V1", "V2"),
                    help="measure the presets at these two small vocabularies and scale to theirs "
                         "(the output layer dominates the emulator's time)")
    ap.add_argument("--save", default=None, help="write the measured steps to this JSON file")
    ap.add_argument("--load", default=None, help="report the steps of a JSON file of --save (no emulator)")
    a = ap.parse_args()

    if a.load:
        steps = json.loads(Path(a.load).read_text())
    elif a.preset:
        steps = [measure_preset(p, a.type, a.prompt_tokens, a.vocabs) for p in a.preset]
    else:
        steps = [measure_model(a.model, a.prompt_tokens)]
    if a.save:
        Path(a.save).write_text(json.dumps(steps, indent=1) + "\n")
    for step in steps:
        print("\n".join(report(step)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
