"""What the recurrent layers' own kernels move in one decode step on Metal, counted by the MSL
emulator's traffic build (the columns of traffic.py): the causal convolution (conv1d_state_f32), the
gated delta rule (gated_delta_rule_f32_k*), the attention layers' output gate (mul_sigmoid_f32),
LFM2's B * x (mul_f32) and Mamba2's state scan (mamba2_scan_f32_n*), at a model's widths, one token. The layers' projections are GEMVs, whose
figures are traffic.py's and gemv_traffic.py's.

    python bench/metal/deltanet_traffic.py                      # Qwen3.5-9B / Qwen3-Next widths
    python bench/metal/deltanet_traffic.py --heads 16 16 128 128 --conv 4 --gate 2048

Default widths: 16 key heads and 32 value heads of 128 (Qwen3.5-9B, Qwen3.5-35B-A3B, Qwen3-Next-80B),
a width-4 convolution over 2 x 16 x 128 + 32 x 128 = 8192 channels, the attention gate of 16 heads
of 256 (4096), LFM2-1.2B's short convolution (2048 channels, width 3) and B * x, and the Mamba2
scan of Granite 4.0-H-Small (128 heads of 64, one group, a state of 128 columns).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np


def load_traffic():
    spec = importlib.util.spec_from_file_location("metal_traffic", Path(__file__).with_name("traffic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step(nk: int, nv: int, dk: int, dv: int, conv: int, gate: int, lfm2: tuple, mamba2: tuple) -> list[dict]:
    """The dispatches of one token through the kernels, in the order a hybrid's layers run them."""
    from forgert import _core
    _core.set_emulator_traffic(True)
    try:
        m = _core.Ops("metal")
    finally:
        _core.set_emulator_traffic(False)
    _core.emulator_traffic()
    r = np.random.default_rng(0)
    f32 = lambda *shape: r.standard_normal(shape).astype(np.float32)
    run = np.array([[0, 0, 1, 0]], np.int32)
    C = 2 * nk * dk + nv * dv
    m.conv1d_state(f32(1, C), f32(C, conv), f32(2, (conv - 1) * C), run, silu=True)
    m.gated_delta_rule(f32(1, nk * dk), f32(1, nk * dk), f32(1, nv * dv), f32(1, nv), f32(1, nv),
                       -np.ones(nv, np.float32), np.ones(nv, np.float32), f32(2, nv * dk * dv), run, nk, nv, dk, dv,
                       True, 1e-6, views=True)
    m.mul_sigmoid(f32(1, gate), f32(1, gate))
    c2, k2 = lfm2
    m.conv1d_state(f32(1, c2), f32(c2, k2), f32(2, (k2 - 1) * c2), run, silu=False)
    m.mul(f32(1, c2), f32(1, c2))
    nh, hd, ng, ds = mamba2
    m.mamba2_scan(f32(1, nh * hd), f32(1, ng * ds), f32(1, ng * ds), f32(1, nh), -np.ones(nh, np.float32),
                  np.ones(nh, np.float32), np.ones(nh, np.float32), f32(2, nh * hd * ds), run, nh, hd, ng, ds)
    return _core.emulator_traffic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, nargs=4, default=[16, 32, 128, 128], metavar=("NK", "NV", "DK", "DV"))
    ap.add_argument("--conv", type=int, default=4, help="the Gated DeltaNet convolution's width")
    ap.add_argument("--gate", type=int, default=4096, help="the attention output gate's width")
    ap.add_argument("--lfm2", type=int, nargs=2, default=[2048, 3], metavar=("C", "K"))
    ap.add_argument("--mamba2", type=int, nargs=4, default=[128, 64, 1, 128], metavar=("NH", "HD", "NG", "DS"),
                    help="the Mamba2 scan's heads, head width, groups and state size")
    a = ap.parse_args()
    t = load_traffic()
    nk, nv, dk, dv = a.heads
    log = step(nk, nv, dk, dv, a.conv, a.gate, tuple(a.lfm2), tuple(a.mamba2))
    # the two convolutions apart (the same kernel at two shapes)
    for d, name in zip([d for d in log if d["kernel"] == "conv1d_state_f32"], ("Gated DeltaNet", "LFM2")):
        d["kernel"] = f"conv1d_state_f32 ({name})"
    lines, _, _ = t.table(t.by_kernel(log), f"recurrent kernels, one token: {nk} key heads and {nv} value heads of "
                                            f"{dk} / {dv}, convolution {a.conv} wide; gate {a.gate}; LFM2 "
                                            f"{a.lfm2[0]} channels, width {a.lfm2[1]}; Mamba2 {a.mamba2[0]} heads "
                                            f"of {a.mamba2[1]}, {a.mamba2[2]} groups, state {a.mamba2[3]}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
