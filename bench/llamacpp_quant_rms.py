"""Measure llama.cpp's own quantizers on the test tensor of tests/test_quantize_kquants.py, for
the RMS-error constants written there. Not run by CI (CI has no llama.cpp source).

    python bench/llamacpp_quant_rms.py /path/to/llama.cpp        # an unpacked source tree

Builds ggml/src/ggml-quants.c alone (generic C, no -march=native, as -DGGML_NATIVE=OFF would)
into a small shared library with stubs for the four ggml functions it calls, quantizes the
tensor with the functions `llama-quantize` calls when there is no importance matrix
(quantize_row_*_ref; quantize_iq4_nl / quantize_iq4_xs with no weights), dequantizes with the
gguf package, and prints each type's RMS error beside forgert's, with the share of blocks
whose bytes are identical.
"""
from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
if importlib.util.find_spec("forgert") is None:     # an installed forgert wins, as in tests/conftest.py
    sys.path.insert(0, str(REPO / "python"))

STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(int type, long long ne) { (void) type; (void) ne; abort(); }
const char * ggml_type_name(int type) { (void) type; return "?"; }
size_t ggml_type_size(int type) { (void) type; abort(); }
"""

# type -> (function, called as a row function (x, y, k) or a matrix function (x, y, nrow, n_per_row, NULL))
FUNCTIONS = {"Q5_0": ("quantize_row_q5_0_ref", "row"), "Q5_1": ("quantize_row_q5_1_ref", "row"),
             "Q2_K": ("quantize_row_q2_K_ref", "row"), "Q3_K": ("quantize_row_q3_K_ref", "row"),
             "Q4_K": ("quantize_row_q4_K_ref", "row"), "Q5_K": ("quantize_row_q5_K_ref", "row"),
             "Q6_K": ("quantize_row_q6_K_ref", "row"), "IQ4_NL": ("quantize_iq4_nl", "matrix"),
             "IQ4_XS": ("quantize_iq4_xs", "matrix")}


def build(src: Path, out_dir: Path) -> ctypes.CDLL:
    stubs = out_dir / "stubs.c"
    stubs.write_text(STUBS)
    lib = out_dir / "libggml_quants.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-std=gnu11", f"-I{src}/ggml/include", f"-I{src}/ggml/src",
                    str(src / "ggml/src/ggml-quants.c"), str(stubs), "-lm", "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def llamacpp_quantize(lib, name: str, x: np.ndarray) -> np.ndarray:
    import gguf
    fn_name, kind = FUNCTIONS[name]
    qtype = gguf.GGMLQuantizationType[name]
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = x.shape
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros(rows * cols // block * nbytes, np.uint8)
    fn = getattr(lib, fn_name)
    px, py = x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)
    if kind == "row":
        fn(px, py, ctypes.c_int64(x.size))
    else:
        fn(px, py, ctypes.c_int64(rows), ctypes.c_int64(cols), None)
    return out.reshape(rows, -1)


def main() -> int:
    import gguf
    from forgert import ggml_types
    from forgert.gguf_export import ALL_QUANTIZERS as QUANTIZERS
    from test_quantize_kquants import reference_tensor
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama.cpp")
    x = reference_tensor()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(src, Path(tmp))
        print(f"tensor {x.shape}, rms {np.sqrt(np.mean(x * x)):.4f}")
        print(f"{'type':8} {'llama.cpp rms':>14} {'forgert rms':>12} {'ratio':>7} {'same blocks':>12}")
        for name in FUNCTIONS:
            qtype = gguf.GGMLQuantizationType[name]
            theirs = llamacpp_quantize(lib, name, x)
            ours = QUANTIZERS[getattr(ggml_types, name)](x).reshape(theirs.shape)
            rms = [float(np.sqrt(np.mean((gguf.quants.dequantize(b, qtype).reshape(x.shape) - x) ** 2)))
                   for b in (theirs, ours)]
            nbytes = gguf.GGML_QUANT_SIZES[qtype][1]
            same = np.mean(np.all(theirs.reshape(-1, nbytes) == ours.reshape(-1, nbytes), axis=1))
            print(f"{name:8} {rms[0]:14.6f} {rms[1]:12.6f} {rms[1] / rms[0]:7.4f} {same:12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
