"""What one decode step moves on Metal, counted by the MSL emulator's traffic build (no Mac
needed): per kernel, the device bytes it needs (distinct bytes: the floor of DRAM traffic),
the bytes its simdgroup accesses request (re-reads that a cache has to absorb), the 64-byte
line efficiency of its loads (fewest lines / lines touched, per simdgroup access), threadgroup
bank conflicts, and the step's bandwidth-bound time on Apple chips.

    python bench/metal/traffic.py                         # SmolLM2 (the default model), whole model
    python bench/metal/traffic.py --preset llama32-1b     # synthetic 1B shapes: 1- and 2-layer
                                                          # models, scaled up to all layers
    python bench/metal/traffic.py --preset llama32-1b llama3-8b --type Q4_0 --save t.json
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
    """The dispatches of the first decode step: those after the prefill's argmax."""
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


def measure_preset(preset: str, wtype: str, prompt_tokens: int) -> dict:
    """One decode step of a synthetic model of all `preset`'s layers: measured on 1- and 2-layer
    models (the emulator is too slow for all layers), scaled as one + (layers - 1) x (two - one)."""
    import forgert  # noqa: F401  the installed package (with _core), before synthetic_gguf adds ../python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import synthetic_gguf as sg
    layers, *rest = sg.PRESETS[preset]
    steps, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            sg.PRESETS[f"{preset}-{n}l"] = (n, *rest)
            path = os.path.join(tmp, f"{preset}-{n}l.gguf")
            sg.write(Path(path), f"{preset}-{n}l", wtype)
            steps.append(by_kernel(decode_step(path, prompt_tokens)))
            sizes.append(weights_read(path))
    return {"title": f"{preset} {wtype} (synthetic; {layers} layers scaled from measured 1- and 2-layer "
                     f"models), decode step after {prompt_tokens} prompt tokens",
            "rows": scaled(steps[0], steps[1], layers),
            "weights": sizes[0][0] + (layers - 1) * (sizes[1][0] - sizes[0][0])}


def measure_model(path: str | None, prompt_tokens: int) -> dict:
    import forgert
    path = path or forgert.Model(None, backend="cpu").path
    return {"title": f"{os.path.basename(path)}, decode step after {prompt_tokens} prompt tokens",
            "rows": by_kernel(decode_step(path, prompt_tokens)), "weights": weights_read(path)[0]}


def report(step: dict) -> list[str]:
    rows = {name: collections.Counter(c) for name, c in step["rows"].items()}
    lines, need, req = table(rows, step["title"])
    weights = step["weights"]
    lines.append(f"Weights one step must read: {weights / 1e6:.3f} MB; the step needs {need / 1e6:.3f} MB "
                 f"({100 * (need / weights - 1):+.2f}%: KV cache, activations, logits) and requests "
                 f"{req / 1e6:.3f} MB.")
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
    ap.add_argument("--save", default=None, help="write the measured steps to this JSON file")
    ap.add_argument("--load", default=None, help="report the steps of a JSON file of --save (no emulator)")
    a = ap.parse_args()

    if a.load:
        steps = json.loads(Path(a.load).read_text())
    elif a.preset:
        steps = [measure_preset(p, a.type, a.prompt_tokens) for p in a.preset]
    else:
        steps = [measure_model(a.model, a.prompt_tokens)]
    if a.save:
        Path(a.save).write_text(json.dumps(steps, indent=1) + "\n")
    for step in steps:
        print("\n".join(report(step)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
