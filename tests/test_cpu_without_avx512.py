"""forgert on x86-64 CPUs older or smaller than the one CI runs on: an AVX2 CPU without AVX-512
(qemu's Haswell model; AMD Zen 2/3 are the same case) and one without AVX at all (Nehalem: the
portable set). The wheel holds AVX-512 and AMX code, so a kernel set's code must never run, not
even to build its table, before its CPU check (a Zen 3 VM once died with SIGILL in
`forgert.Model`, inside the AMX set's constructor). Each run loads the default model under
qemu-x86_64 with that CPU model, names its kernel set, and generates greedy tokens from a prompt
long enough for the prefill int8 GEMM, against transformers' greedy tokens."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import pytest

from conftest import subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 CPU models"),
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                       reason="needs qemu-x86_64 (apt-get install qemu-user; .ci/run installs it)"),
]

PROMPT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is "
          "the capital of")
N_NEW = 6

RUN = """
import json, sys
import forgert
from forgert import _core
m = forgert.Model(sys.argv[1], backend="cpu", threads=1)
out = m.generate(sys.argv[2], max_tokens=int(sys.argv[3]), temperature=0)
print(json.dumps({"info": _core.cpu_info(), "backend": m.info()["backend"], "tokens": out.tokens,
                  "n_prompt": out.usage.prompt_tokens}))
"""


# NumPy's bundled OpenBLAS (0.3.31, numpy 2.3.5 / 2.4.6) takes qemu's Nehalem for a Haswell and dies
# with SIGILL in `import numpy` (a vxorps in its dot kernel; seen on a Zen 5 VM, 2026-12-07): the
# OpenBLAS kernels are named here as the CPU model's, so that only forgert's own choice is tested.
OPENBLAS_CORE = {"Haswell-v4": "Haswell", "Nehalem": "Nehalem"}


def run_under(cpu_model: str, model_path) -> dict:
    env = dict(subprocess_env(), OPENBLAS_CORETYPE=OPENBLAS_CORE[cpu_model])
    proc = subprocess.run(["qemu-x86_64", "-cpu", cpu_model, sys.executable, "-c", RUN, str(model_path), PROMPT,
                           str(N_NEW)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cpu_model,kernels", [("Haswell-v4", "avx2"), ("Nehalem", "generic")])
def test_runs_without_avx512(smollm2_gguf, smollm2_reference, cpu_model, kernels):
    got = run_under(cpu_model, smollm2_gguf)
    assert got["info"]["kernels"] == kernels and got["backend"] == f"cpu ({kernels})"
    assert not [k for k in got["info"]["available"] if "avx512" in k or (kernels == "generic" and k != "generic")]
    assert got["n_prompt"] >= 16   # the prefill's int8 GEMM, not only the decode GEMV
    want, _ = smollm2_reference.greedy(smollm2_reference.text_ids(PROMPT), N_NEW, stop_at_end_of_turn=False)
    assert got["tokens"] == want
