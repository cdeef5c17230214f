"""Teacher-forced top-1 agreement with transformers of forgert's prefill under each
FORGERT_CPU_PREFILL mode (int8x2: two-part int8 activations, the default; int8: one part, as
llama.cpp; f32: the f32 GEMM over dequantized panels), on the default model re-quantized to
Q8_0, Q4_0 and Q4_1 (the types the int8 prefill GEMM takes on x86). Same text as tests/test_e2e_smollm2.py.

    python bench/prefill_fidelity.py [--types q8_0,q4_0,q4_1] [--work /tmp/fidelity]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

FORGERT_LOGITS = """
import sys, numpy as np, forgert
m = forgert.Model(sys.argv[1], backend="cpu")
np.save(sys.argv[3], m.logits([int(i) for i in sys.argv[2].split(",")]))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="q8_0,q4_0,q4_1")
    ap.add_argument("--modes", default="int8x2,int8,f32")
    ap.add_argument("--work", type=Path, default=Path("/tmp/forgert-fidelity"))
    a = ap.parse_args()
    import torch
    import forgert
    from forgert.gguf_export import export_gguf
    from conftest import smollm2_path
    from test_e2e_smollm2 import TEXT
    from fidelity_reference import reference_logits
    torch.set_num_threads(2)
    src = smollm2_path()
    a.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for t in a.types.split(","):
        path = a.work / f"smollm2-{t}.gguf"
        if not path.exists():
            export_gguf(str(src), str(path), t)
        ids = forgert.Model(str(path), backend="cpu").tokenize(TEXT)
        ref = reference_logits(path, ids)
        for mode in a.modes.split(","):
            out = a.work / f"logits-{t}-{mode}.npy"
            subprocess.run([sys.executable, "-c", FORGERT_LOGITS, str(path), ",".join(map(str, ids)), str(out)],
                           check=True, env=dict(os.environ, FORGERT_CPU_PREFILL=mode))
            ours = np.load(out)
            agree = float(np.mean(ours.argmax(1) == ref.argmax(1)))
            rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
            results[f"{t} {mode}"] = dict(top1=agree, max_rel=rel, positions=len(ids))
            print(f"{t} {mode}: top-1 agreement {agree:.4f} over {len(ids)} positions, max rel error {rel:.2e}",
                  flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
