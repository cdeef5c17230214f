"""bench/metal/traffic.py's arithmetic, on hand-made counts (no emulator): the layer scaling
(one + (layers - 1) x (two - one)) and the vocabulary scaling, the bandwidth-bound times and the
llama.cpp columns, and that --load prints what --save stored."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

from bench_scripts import load_bench_script

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "metal" / "traffic.py"


def load_traffic():
    return load_bench_script("metal/traffic.py")


def counts(**kw):
    c = collections.Counter({f: 0 for f in load_traffic().FIELDS})
    c.update(kw)
    return c


def test_scaled_layers():
    t = load_traffic()
    one = {"mv": counts(dispatches=3, read_needed=100, load_lines64=10, load_lines64_min=5, tg_memory=64),
           "head": counts(dispatches=1, read_needed=7)}
    two = {"mv": counts(dispatches=5, read_needed=160, load_lines64=16, load_lines64_min=8, tg_memory=32),
           "head": counts(dispatches=1, read_needed=7)}
    s = t.scaled(one, two, 16)
    # per layer: 2 dispatches, 60 bytes, 6 lines of which 3 needed; the head is not per layer
    assert s["mv"]["dispatches"] == 3 + 15 * 2 and s["mv"]["read_needed"] == 100 + 15 * 60
    assert s["mv"]["load_lines64"] == 100 and s["mv"]["load_lines64_min"] == 50
    assert s["mv"]["tg_memory"] == 64  # a maximum, not scaled
    assert s["head"]["dispatches"] == 1 and s["head"]["read_needed"] == 7


def test_vocabulary_scaling():
    """The output layer measured at two small vocabularies, extrapolated to the model's: what
    grows with the vocabulary (the output GEMV's bytes, argmax) grows by the factor; the rest not."""
    t = load_traffic()
    base = {"out": counts(dispatches=1, read_needed=1000), "norm": counts(dispatches=2, read_needed=50)}
    v1 = {"out": counts(dispatches=1, read_needed=300), "norm": counts(dispatches=2, read_needed=50)}
    v2 = {"out": counts(dispatches=1, read_needed=500), "norm": counts(dispatches=2, read_needed=50)}
    s = t.combined(base, [(62.5, v1, v2)])   # a factor (V - V1) / (V2 - V1) of 62.5
    assert s["out"]["read_needed"] == 1000 + 62.5 * 200 and s["out"]["dispatches"] == 1
    assert s["norm"]["read_needed"] == 50 and s["norm"]["dispatches"] == 2


def test_report_bounds_and_llamacpp_columns():
    t = load_traffic()
    # 1 GB needed, 2 GB requested: at 100 GB/s (M2) 10 ms (100 tokens/s) and 20 ms (50 tokens/s)
    step = {"title": "hand-made", "weights": 10**9,
            "rows": {"k": counts(dispatches=1, read_needed=10**9, read_requested=2 * 10**9)}}
    text = "\n".join(t.report(step))
    m2 = next(line for line in text.splitlines() if line.startswith("| M2 |"))
    cells = [c.strip() for c in m2.strip("|").split("|")]
    assert cells[:6] == ["M2", "100", "10.000 ms", "100.0", "20.000 ms", "50.0"]
    # llama.cpp: 21.91 tokens/s x 3.56 GiB (3.8226 GB) = 83.752 GB/s, 84% of 100 GB/s
    assert cells[6] == "21.91" and cells[7] == "83.8 (84%)"


def test_load_prints_what_save_stored(tmp_path):
    t = load_traffic()
    step = {"title": "saved step", "weights": 5 * 10**8,
            "rows": {"k": dict(counts(dispatches=2, read_needed=6 * 10**8, read_requested=6 * 10**8,
                                      load_lines64=4, load_lines64_min=4))}}
    path = tmp_path / "steps.json"
    path.write_text(json.dumps([step]))
    out = subprocess.run([sys.executable, str(SCRIPT), "--load", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "\n".join(t.report(step)).strip()
    assert "### saved step" in out and "| **step** | 2 | 600.000 | 600.000 | 1.00 | 100% |" in out
