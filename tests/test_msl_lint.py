"""The MSL address-space lint (src/emulator/tools/msl_lint.py): every .metal of the project
type-checks with device, constant, threadgroup and thread as distinct address spaces, as
Apple's compiler checks them, and snippets that mix them up, or leave a pointer's or
reference's address space unwritten, are rejected. Syntax-only clang runs, no build: a few
seconds. Skipped where clang is not installed."""
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
    # a device pointer where a thread pointer or reference is expected
    ("kernel void k(device float* o [[buffer(0)]]) { o[1] = get_thread(o); }",
     ["address space 'device'", "thread address space"]),
    ("static float first(thread const float& r) { return r; }\n"
     "kernel void k(device float* o [[buffer(0)]]) { o[1] = first(o[0]); }",
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


# Apple's compiler wants an address space written at every pointer and reference level of a
# declaration, exactly one; clang cannot tell `float*` from `thread float*` (the lint's own check).
def test_explicit_address_spaces_pass(tmp_path, flags):
    ok, diagnostics = lint_snippet(tmp_path, flags, """
struct args_t { int n; };
struct S { device float* f; constant int* c; thread float& r; thread float& get() { return r; } };
template <typename T> static device T* skip(device T* p, int n) { return p + n; }
static float pick(device const char* thread* p, thread float* out, threadgroup float* s, constant args_t& a) {
    out[0] = s[0];
    return float(p[a.n][0]);
}
template <typename T> static T first(device const T* p, thread const T& r) { return p[0] + r; }
kernel void k(constant args_t& a [[buffer(0)]],
              device const char* x
                  [[buffer(1)]],
              device float* out [[buffer(2)]],
              threadgroup float* shmem [[threadgroup(0)]]) {
    device float* o = skip(out, 1);
    device float *o2 = out, *o3 = o2 + 1;
    device const char* rows[2] = {x, x + 4};
    float t[2] = {1.0f, 2.0f};
    thread float& r = t[1];
    auto& same = t[0];
    o[0] = pick(rows, t, shmem, a) + first(o2, r) + first<float>(o3, same);
}
""")
    assert ok, diagnostics


# Each snippet with the message the lint must give on the line marked `// <-`.
@pytest.mark.parametrize("body, expected", [
    ("static float h(float* p) { return p[0]; }  // <-\n"
     "kernel void k(device float* o [[buffer(0)]]) { float t[2] = {}; o[0] = h(t); }",
     ["'float* p': no address space (device, constant, threadgroup or thread) before '*' #1"]),
    ("kernel void k(device float* o [[buffer(0)]]) {\n"
     "    float t[2] = {1.0f, 2.0f};\n"
     "    float* p = t;  // <-\n"
     "    o[0] = p[1];\n}",
     ["'float* p': no address space"]),
    ("kernel void k(device float* o [[buffer(0)]]) {\n"
     "    device float *a = o, *b = o + 1, **c = &a;  // <-\n"
     "    o[0] = a[0] + b[0] + c[0][0];\n}",
     ["'device float **c': no address space (device, constant, threadgroup or thread) before '*' #2"]),
    ("static char h(device const char**\n"
     "              p) { return p[0][0]; }  // <-\n",
     ["'device const char** p': no address space (device, constant, threadgroup or thread) before '*' #2"]),
    ("static char h(int n,\n"
     "              thread device const char** p) { return p[n][0]; }  // <-\n",
     ["'thread device const char** p': two address spaces (thread, device) before '*' #1",
      "'thread device const char** p': no address space (device, constant, threadgroup or thread) before '*' #2"]),
    ("static float* h(thread float* p) { return p + 1; }  // <-\n",
     ["'static float* h': no address space"]),
    ("static float h(const float& r) { return r; }  // <-\n",
     ["'const float& r': no address space (device, constant, threadgroup or thread) before '&' #1"]),
    ("struct S {\n    int n;\n    float* f;  // <-\n};",
     ["'float* f': no address space"]),
    # after attributes on the same line (the translation drops them, clang's columns are its)
    ("kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {"
     " float t[2] = {}; const float* p = t + i; o[i] = p[0]; }  // <-",
     ["'const float* p': no address space"]),
])
def test_missing_or_double_address_space_fails(tmp_path, flags, body, expected):
    ok, diagnostics = lint_snippet(tmp_path, flags, body + "\n")
    assert not ok, "the lint accepted:\n" + body
    first = (HEAD + HELPERS).count("\n") + 1
    marked = {first + i for i, line in enumerate(body.split("\n")) if line.endswith("// <-")}
    lines = {int(n) for n in re.findall(r"snippet\.metal:(\d+):\d+: error:", diagnostics)}
    assert lines == marked, diagnostics
    for text in expected:
        assert text in diagnostics, diagnostics


def test_explicit_address_spaces_in_included_header(tmp_path, flags):
    (tmp_path / "helpers.h").write_text("#pragma once\nstatic float h(const float* p) { return p[0]; }\n")
    ok, diagnostics = lint_snippet(tmp_path, flags, '#include "helpers.h"\n')
    assert not ok and re.search(r"helpers\.h:2:\d+: error: 'const float\* p': no address space", diagnostics), \
        diagnostics
