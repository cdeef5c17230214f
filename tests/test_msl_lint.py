"""The MSL address-space lint (src/emulator/tools/msl_lint.py): every .metal of the project
type-checks with device, constant, threadgroup and thread as distinct address spaces, as
Apple's compiler checks them, and snippets that mix them up are rejected. Syntax-only
clang runs, no build: a few seconds. Skipped where clang is not installed."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "emulator" / "tools"))
try:
    import msl_lint
finally:
    sys.path.pop(0)

CLANG = msl_lint.find_clang()
pytestmark = pytest.mark.skipif(CLANG is None, reason="clang is not installed (apt-get install clang)")

HEAD = "#include <metal_stdlib>\nusing namespace metal;\n"
HELPERS = """
static void put(device float* p, float v) { p[0] = v; }
static float get_thread(thread const float* p) { return p[0]; }
static float get_constant(constant float* p) { return p[0]; }
static float get_tg(threadgroup const float* p) { return p[0]; }
"""


@pytest.fixture(scope="module")
def flags():
    return msl_lint.half_flags(CLANG)


def lint_snippet(tmp_path, flags, body):
    path = tmp_path / "snippet.metal"
    path.write_text(HEAD + HELPERS + body)
    return msl_lint.check(path, CLANG, flags)


def test_every_metal_file_passes():
    files = msl_lint.default_files()
    assert any(f.parent.name == "shaders" for f in files) and any(f.parent.name == "tests" for f in files)
    failed = {str(f.relative_to(ROOT)): d for f, (ok, d) in msl_lint.lint(files, CLANG).items() if not ok}
    assert not failed, "\n".join("%s:\n%s" % kv for kv in failed.items())


def test_correct_address_spaces_pass(tmp_path, flags):
    ok, diagnostics = lint_snippet(tmp_path, flags, """
kernel void k(constant float* c [[buffer(0)]], device float* out [[buffer(1)]],
              device atomic_uint* counter [[buffer(2)]], threadgroup float* shmem [[threadgroup(0)]],
              uint i [[thread_index_in_threadgroup]]) {
    threadgroup float tile[64];
    threadgroup atomic_int flag;
    float local[2] = {get_constant(c), get_tg(shmem)};
    tile[i] = get_thread(local) + get_tg(tile) + get_tg(&tile[1]);
    atomic_store_explicit(&flag, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
    simdgroup_float8x8 m;
    simdgroup_load(m, tile);
    simdgroup_load(m, (device const float*)out);
    simdgroup_store(m, shmem);
    put(out + i, tile[i]);
}
""")
    assert ok, diagnostics


# Each mistake with what its error must mention (clang's wording varies between versions).
@pytest.mark.parametrize("body, expected", [
    # a threadgroup pointer where a device pointer is expected: kernel parameter and local array
    ("kernel void k(threadgroup float* s [[threadgroup(0)]]) { put(s, 1.0f); }",
     ["address space 'threadgroup'", "address space 'device'"]),
    ("kernel void k(device float* o [[buffer(0)]]) { threadgroup float s[32]; put(s, o[0]); }",
     ["threadgroup float[32]", "device float *"]),
    # a device pointer where a thread pointer (explicit or no address space) is expected
    ("kernel void k(device float* o [[buffer(0)]]) { o[1] = get_thread(o); }",
     ["address space 'device'", "thread address space"]),
    ("static float first(const float* p) { return p[0]; }\n"
     "kernel void k(device float* o [[buffer(0)]]) { o[1] = first(o); }",
     ["address space 'device'", "thread address space"]),
    # and the other way round: a thread pointer where a device pointer is expected
    ("kernel void k(device float* o [[buffer(0)]]) { float t[4] = {}; put(t, o[0]); }",
     ["float[4]", "device float *"]),
    # a constant pointer where a device pointer is expected
    ("kernel void k(constant float* c [[buffer(0)]], device float* o [[buffer(1)]]) {\n"
     "    device const float* p = c; o[0] = p[0]; }",
     ["constant float *", "device float"]),
    # kernel parameters: a buffer needs device or constant, [[threadgroup(n)]] needs threadgroup
    ("kernel void k(float* o [[buffer(0)]]) { o[0] = 1.0f; }",
     ["kernel k: parameter 'float* o [[buffer(0)]]' must be a pointer or reference to device or constant memory"]),
    ("kernel void k(device float* s [[threadgroup(0)]]) { s[0] = 1.0f; }",
     ["must be a pointer or reference to threadgroup memory"]),
    # builtins take only the spaces MSL allows: no atomics or simdgroup loads in thread memory
    ("kernel void k(device int* o [[buffer(0)]]) {\n"
     "    atomic_int a; atomic_store_explicit(&a, 1, memory_order_relaxed); o[0] = 0; }",
     ["atomic_store_explicit"]),
    ("kernel void k(device float* o [[buffer(0)]]) { float t[64]; simdgroup_float8x8 m; simdgroup_load(m, t); }",
     ["simdgroup_load"]),
])
def test_address_space_mistakes_fail(tmp_path, flags, body, expected):
    ok, diagnostics = lint_snippet(tmp_path, flags, body + "\n")
    assert not ok, "the lint accepted:\n" + body
    first = (HEAD + HELPERS).count("\n") + 1  # errors point at the body's lines of the .metal
    lines = {int(n) for n in re.findall(r"snippet\.metal:(\d+):\d+: error:", diagnostics)}
    assert lines and lines <= set(range(first, first + body.count("\n") + 1)), diagnostics
    for text in expected:
        assert text in diagnostics, diagnostics
