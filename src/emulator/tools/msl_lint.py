#!/usr/bin/env python3
"""msl_lint: type-check .metal files with MSL address spaces as distinct types.

The emulator's executing build erases `device`, `constant`, `threadgroup` and `thread`, so
a pointer passed into the wrong address space compiles on Linux and fails only under
Apple's compiler. This translates each file with `msl2cpp.py --strict-address-spaces` and
runs `clang++ -fsyntax-only` on it (no code generation, a second or so per file).

Usage: msl_lint.py [file.metal ...]   (default: src/shaders/*.metal, src/emulator/tests/*.metal)
Exit status 1 when a file fails; clang's diagnostics name the spaces (device, constant,
threadgroup, thread) instead of clang's numbers.
"""
import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys

TOOLS = pathlib.Path(__file__).resolve().parent
EMULATOR = TOOLS.parent
ROOT = EMULATOR.parents[1]
sys.path.insert(0, str(TOOLS))
import msl2cpp  # noqa: E402

SPACE_NAMES = {"1": "device", "2": "constant", "3": "threadgroup"}  # msl/address_spaces.h


def default_files():
    return sorted((ROOT / "src" / "shaders").glob("*.metal")) + sorted((EMULATOR / "tests").glob("*.metal"))


def find_clang():
    if os.environ.get("FORGERT_EMU_CXX"):
        return os.environ["FORGERT_EMU_CXX"]
    for name in ("clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "clang++", "clang++-14"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def half_flags(clang):
    """As src/emulator/CMakeLists.txt: clang without _Float16 on this target (clang 14 on
    x86-64) needs __fp16 made an arithmetic type."""
    probe = subprocess.run([clang, "-x", "c++", "-fsyntax-only", "-"],
                           input="_Float16 twice(_Float16 a) { return a + a; }", capture_output=True, text=True)
    if probe.returncode == 0:
        return []
    return ["-Xclang", "-fnative-half-type", "-Xclang", "-fallow-half-arguments-and-returns"]


def readable(diagnostics):
    """clang's address_space(N) and "address space 'N'" as MSL names."""
    text = re.sub(r"__attribute__\(\(address_space\(([123])\)\)\)", lambda m: SPACE_NAMES[m.group(1)], diagnostics)
    text = re.sub(r"address space '([123])'", lambda m: "address space '%s'" % SPACE_NAMES[m.group(1)], text)
    return text.replace("generic address space", "thread address space")


def check(path, clang, flags):
    """(ok, diagnostics) for one .metal file."""
    path = pathlib.Path(path).resolve()
    try:
        cpp = msl2cpp.translate(path.read_text(), str(path), strict=True)
    except msl2cpp.TranslateError as e:
        return False, "msl2cpp: %s\n" % e
    cmd = [clang, "-x", "c++", "-std=c++17", "-fsyntax-only", "-Wno-unknown-attributes", *flags,
           "-I", str(EMULATOR / "include"), "-I", str(path.parent), "-I", str(ROOT / "src" / "shaders"),
           "-I", str(ROOT / "src" / "cpp"), "-"]
    r = subprocess.run(cmd, input=cpp, capture_output=True, text=True)
    return r.returncode == 0, readable(r.stderr)


def lint(files, clang, jobs=None):
    """{path: (ok, diagnostics)} for every file."""
    flags = half_flags(clang)
    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        results = pool.map(lambda f: check(f, clang, flags), files)
        return dict(zip(files, results))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=pathlib.Path)
    ap.add_argument("-j", "--jobs", type=int, help="parallel clang processes (default: all cores)")
    a = ap.parse_args()
    clang = find_clang()
    if not clang:
        sys.exit("msl_lint: clang++ not found (apt-get install clang)")
    failed = 0
    for path, (ok, diagnostics) in lint(a.files or default_files(), clang, a.jobs).items():
        sys.stderr.write(diagnostics)
        if not ok:
            failed += 1
            print("FAIL %s" % path)
    print("msl_lint: %d file(s), %d failed" % (len(a.files or default_files()), failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
