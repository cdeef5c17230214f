"""The Objective-C++ Metal device compiles (syntax and types, ARC) against the stub
SDK headers in tests/metal_stubs/. The real SDK check happens in the macOS CI job."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MM = ROOT / "src" / "cpp" / "backends" / "metal" / "device_metal.mm"
STUBS = ROOT / "tests" / "metal_stubs"


def find_clang():
    for name in ("clang++", "clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


CLANG = find_clang()
pytestmark = [
    pytest.mark.skipif(CLANG is None, reason="clang++ not installed (apt-get install clang)"),
    pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the build compiles the .mm against the real SDK"),
]


def objcxx_check(source: Path):
    cmd = [CLANG, "-x", "objective-c++", "-std=c++17", "-fobjc-arc", "-fblocks", "-fobjc-runtime=macosx-13.0",
           "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I", str(STUBS), "-I", str(ROOT / "src" / "cpp"),
           str(source)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_device_metal_mm_compiles_against_stubs():
    r = objcxx_check(MM)
    assert r.returncode == 0, r.stderr


def test_stub_check_rejects_a_misspelled_selector(tmp_path):
    # Guards the check itself: a selector the SDK does not have must fail to compile.
    bad = tmp_path / "bad.mm"
    bad.write_text(
        "#import <Metal/Metal.h>\n"
        "void f(id<MTLDevice> d) { (void)[d newBufferWithLenght:16 options:MTLResourceStorageModeShared]; }\n")
    r = objcxx_check(bad)
    assert r.returncode != 0
    assert "newBufferWithLenght" in r.stderr


def test_stub_check_enforces_arc(tmp_path):
    # Under ARC an explicit release is an error: the .mm really is checked with ARC on.
    bad = tmp_path / "arc.mm"
    bad.write_text("#import <Foundation/Foundation.h>\n"
                   "@interface X : NSObject\n- (void)release;\n@end\n"
                   "void f(X* x) { [x release]; }\n")
    r = objcxx_check(bad)
    assert r.returncode != 0
