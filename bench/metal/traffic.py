"""What one decode step moves on Metal, counted by the MSL emulator's traffic build (no Mac
needed): per kernel, the device bytes it needs (distinct bytes: the floor of DRAM traffic),
the bytes its simdgroup accesses request (re-reads that a cache has to absorb), the 64-byte
line efficiency of its loads (fewest lines / lines touched, per simdgroup access), threadgroup
bank conflicts, and the step's bandwidth-bound time on Apple chips.

    python bench/metal/traffic.py                         # SmolLM2 (the default model), whole model
    python bench/metal/traffic.py --preset llama32-1b     # synthetic 1B shapes: 1- and 2-layer
                                                          # models, scaled up to all layers
    python bench/metal/traffic.py model.gguf --prompt-tokens 4

The step measured is the first decode step after a short prompt (the GEMV path; a long prompt
would take the emulator minutes). The emulator counts what the CPU build of each kernel loads
(src/emulator/README.md, Traffic counting), not what Apple's compiler and caches do.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

CHIPS = {"M1": 68.25, "M2": 100.0, "M3 Max": 400.0, "M4 Max": 546.0}  # GB/s
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


def table(rows: dict[str, collections.Counter], title: str) -> list[str]:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="GGUF file (default: forgert's default model)")
    ap.add_argument("--preset", default=None, help="synthetic shapes of bench/synthetic_gguf.py (llama32-1b, ...)")
    ap.add_argument("--type", default="Q4_K_M", help="weight type of the synthetic model")
    ap.add_argument("--prompt-tokens", type=int, default=4)
    a = ap.parse_args()

    lines = []
    if a.preset:
        import forgert  # noqa: F401  the installed package (with _core), before synthetic_gguf adds ../python
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import synthetic_gguf as sg
        layers, *rest = sg.PRESETS[a.preset]
        steps, sizes = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for n in (1, 2):
                sg.PRESETS[f"{a.preset}-{n}l"] = (n, *rest)
                path = os.path.join(tmp, f"{a.preset}-{n}l.gguf")
                sg.write(Path(path), f"{a.preset}-{n}l", a.type)
                steps.append(by_kernel(decode_step(path, a.prompt_tokens)))
                sizes.append(weights_read(path))
        rows = scaled(steps[0], steps[1], layers)
        weights = sizes[0][0] + (layers - 1) * (sizes[1][0] - sizes[0][0])
        title = (f"{a.preset} {a.type} (synthetic; {layers} layers scaled from 1- and 2-layer models), "
                 f"decode step after {a.prompt_tokens} prompt tokens")
        hidden, kv_heads, heads = rest[0], rest[3], rest[2]
        kv_dim = hidden // heads * kv_heads
    else:
        import forgert
        path = a.model or forgert.Model(None, backend="cpu").path
        rows = by_kernel(decode_step(path, a.prompt_tokens))
        weights = weights_read(path)[0]
        title = f"{os.path.basename(path)}, decode step after {a.prompt_tokens} prompt tokens"
        layers = kv_dim = None
    text, need, req = table(rows, title)
    lines += text
    lines.append(f"Weights one step must read: {weights / 1e6:.3f} MB; the step needs {need / 1e6:.3f} MB "
                 f"({100 * (need / weights - 1):+.2f}%: KV cache, activations, logits) and requests "
                 f"{req / 1e6:.3f} MB.")
    lines += ["", "| chip | GB/s | bound by needed bytes | tokens/s | bound by requested bytes | tokens/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for chip, gbs in CHIPS.items():
        t_need, t_req = need / (gbs * 1e9), req / (gbs * 1e9)
        lines.append(f"| {chip} | {gbs:g} | {1e3 * t_need:.3f} ms | {1 / t_need:.0f} | {1e3 * t_req:.3f} ms "
                     f"| {1 / t_req:.0f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
