"""The Objective-C++ Metal device compiles (syntax and types, ARC) against the stub
SDK headers in tests/metal_stubs/ and, when FORGERT_APPLE_SDK names a copy of an Xcode SDK,
against Apple's real Metal headers. The macOS CI job compiles it against the SDK for real."""
import os
import re
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


# --------------------------------------------------------------------------- real SDK headers
# FORGERT_APPLE_SDK=/path/to/X.sdk checks the .mm against Apple's own Metal headers, e.g. a
# MacOSX or iPhoneOS SDK copied from Xcode. clang 14-16 on Linux cannot parse all of Foundation
# for every target, so headers that Foundation/Security pull in and the SDK lacks (Mac-only
# headers when the SDK is an iOS one, compiled for Mac Catalyst) are replaced by empty files;
# Metal's headers are never replaced, so every Metal call is checked against the real API.
APPLE_SDK = os.environ.get("FORGERT_APPLE_SDK")
STUBBABLE = ("Foundation/", "Security/", "CoreFoundation/")


def sdk_target(sdk: Path) -> str:
    settings = (sdk / "SDKSettings.json").read_text() if (sdk / "SDKSettings.json").exists() else ""
    # MTLCopyAllDevices is macOS-only: an iOS SDK is checked as Mac Catalyst, where it exists.
    return "arm64-apple-macos13.0" if '"macosx"' in settings.lower() else "arm64-apple-ios17.0-macabi"


def objcxx_check_sdk(source: Path, sdk: Path, stubs: Path):
    cmd = [CLANG, "-x", "objective-c++", "-std=c++17", "-stdlib=libc++", "-fobjc-arc", "-fblocks",
           "-target", sdk_target(sdk), "-isysroot", str(sdk), "-idirafter", str(stubs), "-fsyntax-only",
           "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "src" / "cpp"), str(source)]
    stubbed = []
    for _ in range(200):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        missing = re.search(r"fatal error: '([^']+)' file not found", r.stderr)
        if r.returncode == 0 or not missing or not missing.group(1).startswith(STUBBABLE):
            return r, stubbed
        (stubs / missing.group(1)).parent.mkdir(parents=True, exist_ok=True)
        (stubs / missing.group(1)).touch()
        stubbed.append(missing.group(1))
    raise AssertionError("too many missing SDK headers: " + ", ".join(stubbed[-5:]))


@pytest.mark.skipif(not APPLE_SDK, reason="set FORGERT_APPLE_SDK to an Xcode SDK directory to check against it")
def test_device_metal_mm_compiles_against_real_sdk(tmp_path):
    r, stubbed = objcxx_check_sdk(MM, Path(APPLE_SDK), tmp_path)
    assert r.returncode == 0, r.stderr
    assert not any(h.startswith("Metal/") for h in stubbed)


@pytest.mark.skipif(not APPLE_SDK, reason="set FORGERT_APPLE_SDK to an Xcode SDK directory to check against it")
def test_real_sdk_check_rejects_a_misspelled_selector(tmp_path):
    bad = tmp_path / "bad.mm"
    bad.write_text(MM.read_text().replace("newBufferWithLength:", "newBufferWithLenght:"))
    r, _ = objcxx_check_sdk(bad, Path(APPLE_SDK), tmp_path / "stubs")
    assert r.returncode != 0 and "newBufferWithLenght" in r.stderr
