"""Teacher-forced top-1 agreement with transformers of forgert's CPU decode (one token per step,
the few-token kernels) and prefill (the whole text in one forward) in each activation format
(forgert.Model's `activations`: int16, two int8 parts a value, the default; int8, one part as
llama.cpp), on the default model (SmolLM2-135M-Instruct Q4_1) and its re-quantizations. Same text
as tests/test_e2e_smollm2.py. The reference (transformers on the same GGUF, dequantized by the
gguf package) has the same weights: what differs is activation rounding and f32 arithmetic.

    python bench/decode_fidelity.py [--types q4_1,q8_0,q4_0] [--work /tmp/forgert-fidelity]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="q4_1,q8_0,q4_0", help="q4_1: the shipped file; others re-quantized")
    ap.add_argument("--activations", default="int16,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/forgert-fidelity"))
    a = ap.parse_args()
    import torch
    import forgert
    from forgert.gguf_export import export_gguf
    from conftest import smollm2_path
    from machine import cpu_name
    from fidelity_reference import reference_logits
    from test_e2e_smollm2 import TEXT
    torch.set_num_threads(a.threads)
    src = smollm2_path()
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("FORGERT_CPU_PREFILL", None)     # the prefill follows `activations`
    results = {}
    from forgert import _core
    print(f"machine: {cpu_name()}; kernels {_core.cpu_info()['kernels']}")
    for t in a.types.split(","):
        path = Path(src) if t == "q4_1" else a.work / f"smollm2-{t}.gguf"
        if not path.exists():
            export_gguf(str(src), str(path), t)
        ids = forgert.Model(str(path), backend="cpu").tokenize(TEXT)
        ref = reference_logits(path, ids)
        for act in a.activations.split(","):
            m = forgert.Model(str(path), backend="cpu", threads=a.threads, activations=act)
            prefill = np.asarray(m.logits(ids))
            eng = forgert.Model(str(path), backend="cpu", threads=a.threads, activations=act)._engine
            decode = np.concatenate([np.asarray(eng.forward(np.asarray(ids[i:i + 1], np.int32), i)).reshape(1, -1)
                                     for i in range(len(ids))])
            for path_name, ours in (("decode", decode), ("prefill", prefill)):
                agree = float(np.mean(ours.argmax(1) == ref.argmax(1)))
                rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
                results[f"{t} {act} {path_name}"] = dict(top1=agree, max_rel=rel, positions=len(ids))
                print(f"{t} {act} {path_name}: top-1 agreement {agree:.4f} over {len(ids)} positions, "
                      f"max rel error {rel:.2e}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
