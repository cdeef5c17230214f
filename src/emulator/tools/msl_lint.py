#!/usr/bin/env python3
"""msl_lint: type-check .metal files with MSL address spaces as distinct types.

The emulator's executing build erases `device`, `constant`, `threadgroup` and `thread`, so
a pointer passed into the wrong address space compiles on Linux and fails only under
Apple's compiler. This translates each file with `msl2cpp.py --strict-address-spaces` and
runs `clang++ -fsyntax-only` on it (no code generation; msl/msl.h is precompiled once, then
a few tenths of a second per file), which rejects conversions between spaces.

It also checks what clang cannot, as `thread` is its default space (`float*` and `thread
float*` are one type there): Metal wants exactly one address space written at every pointer
and reference level of a declaration. Each parameter, variable and field of pointer or
reference type, and each function's return type, in the .metal file and in the headers it
includes from its folder or src/ (not src/emulator/include, not system headers) is found in
clang's AST dump, and its text up to the name is split at the `*`s and `&`s outside brackets:
the text before each must hold one of device, constant, threadgroup, thread (or
threadgroup_imageblock, ray_data, object_data), so `float* p`, `const float& r`, `device const char** p` (second
level) and `thread device const char** p` (two spaces, then none) fail, and `device const
char* thread* p` passes. Not checked: `auto` declarations (the space is deduced), pointer
types spelled elsewhere (casts, template arguments, typedef/using aliases, sizeof), types
hidden behind a typedef or macro, unnamed parameters, and code the preprocessor excludes.
A template's `T* p` is flagged like any other (the lint does not know what T will be).

Usage: msl_lint.py [file.metal ...]   (default: src/shaders/*.metal, src/emulator/tests/*.metal)
Exit status 1 when a file fails; clang's diagnostics name the spaces (device, constant,
threadgroup, thread) instead of clang's numbers; the explicit-space errors quote the
declaration. Columns are those of the translation (attributes removed), lines the .metal's.
"""
import argparse
import atexit
import concurrent.futures
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

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


# -- explicit address spaces ---------------------------------------------------------------
# Clang cannot see this one: `thread` is the default space, so `float* p` and `thread float* p`
# are the same type to it, while Apple's compiler wants a space written at every pointer and
# reference level ("pointer type must have explicit address space qualifier") and rejects two.
# So the declarations come from clang's AST dump (it finds them, with templates, macros and
# multi-line parameter lists parsed for us) and their spelling is checked on the source text.
SPACES = {"device", "constant", "threadgroup", "thread", "threadgroup_imageblock", "ray_data", "object_data"}
# A location in -ast-dump text: clang prints only what changed since the previous one
# (file:line:col, line:L:C or col:C), so every one must be read in order to know the file.
LOC = re.compile(r"<invalid sloc>|line:(\d+):(\d+)|col:(\d+)|(<[^<>\s][^<>]*>|[^\s<>',]+):(\d+):(\d+)")
DECL = re.compile(r"[-|`\s]*(ParmVarDecl|VarDecl|FieldDecl|FunctionDecl|CXXMethodDecl) 0x")
NAME = re.compile(r"(?: used| referenced| invalid)* (\w+) '([^']*)'")  # implicit, unnamed, operators: no match


def pointer_declarations(dump, checked):
    """{(file, line, col): (kind, name)} of the named variables, parameters and fields of pointer or
    reference type, and functions returning one, declared in a file for which checked(file) is
    true (line and col: the name's)."""
    found, file, line = {}, None, 0
    for text in dump.splitlines():
        locs = []
        for m in LOC.finditer(text):
            if m.group(4):
                file, line = m.group(4), int(m.group(5))
            elif m.group(1):
                line = int(m.group(1))
            if file is not None and m.group(0) != "<invalid sloc>":
                locs.append((m, file, line, int(m.group(2) or m.group(3) or m.group(6))))
        decl = DECL.match(text)
        if not decl or len(locs) < 2:
            continue
        # `<begin, end> name` or `<begin> name`: the name's location follows the range
        at = 2 if text[locs[0][0].end()] == "," else 1
        if at >= len(locs):
            continue
        m, f, n, c = locs[at]
        named = NAME.match(text, m.end())
        if not named or not checked(f):
            continue
        type_ = named.group(2)
        if decl.group(1) in ("FunctionDecl", "CXXMethodDecl"):
            type_ = type_.split("(")[0]  # the return type
        if re.search(r"[*&]", type_):
            found[(f, n, c)] = decl.group(1), named.group(1)  # template instantiations repeat the pattern's location
    return found


def split_top(text, seps):
    """text split at the characters of seps outside (), [], {} and <>: (pieces, separators)."""
    pieces, found, depth, start = [], [], 0, 0
    for i, c in enumerate(text):
        depth += (c in "([{<") - (c in ")]}>")
        if depth == 0 and c in seps and not (c == "&" and text[i - 1:i] == "&"):  # && is one level
            pieces.append(text[start:i])
            found.append(c)
            start = i + 1
    return pieces + [text[start:]], found


def declaration_start(masked, pos, group):
    """Where the declaration whose name is at pos begins: after the previous `;`, `{`, `}`, `(`,
    label `:` or (unless group) `,` at the same nesting level. Walked back from the name, as the
    AST's begin location is useless here: for `device float* p` it is in msl.h's macro."""
    depth = 0
    while pos > 0:
        c = masked[pos - 1]
        if c in ")]>":
            depth += 1
        elif c in "([<":
            if depth == 0:
                break
            depth -= 1
        elif c == ";" or depth == 0 and (c in "{}" or (c == "," and not group)
                                         or (c == ":" and "::" not in masked[pos - 2:pos + 1])):
            break
        pos -= 1
    return pos


def spaces_errors(decl):
    """What is wrong with the address spaces of `decl` (a declaration up to its name)."""
    pieces, levels = split_top(decl, "*&")
    errors = []
    for k, (piece, op) in enumerate(zip(pieces, levels), 1):  # the text before each `*` or `&`
        spaces = [w for w in re.findall(r"\w+", piece) if w in SPACES]
        if not spaces:
            errors.append("no address space (device, constant, threadgroup or thread) before '%s' #%d" % (op, k))
        elif len(spaces) > 1:
            errors.append("two address spaces (%s) before '%s' #%d" % (", ".join(spaces), op, k))
    return errors


class Source:
    """The masked text of a checked file, addressed by clang's (line, byte column)."""

    def __init__(self, text, first_line=0):
        self.lines = text.split("\n")[first_line:]
        self.masked = msl2cpp.mask("\n".join(self.lines))
        self.starts = [0]
        for ln in self.lines:
            self.starts.append(self.starts[-1] + len(ln) + 1)

    def offset(self, line, col):
        return self.starts[line - 1] + len(self.lines[line - 1].encode()[:col - 1].decode("utf-8", "ignore"))


def explicit_space_errors(dump, metal, cpp):
    """Diagnostics for the pointer and reference declarations of the .metal file (and of the
    headers it includes from its folder or src/, not the emulator's or the system's) that do
    not name exactly one address space at each level. The .metal's text is the translation's, whose columns are
    the ones clang reports (attributes are gone there) and whose lines after `#line 1` are the
    .metal's; `auto` declarations are skipped (the space is deduced)."""
    roots = {os.path.dirname(metal) + os.sep, str(ROOT / "src") + os.sep}  # the project's files
    include = str(EMULATOR / "include") + os.sep

    def checked(f):
        f = os.path.normpath(f)
        return any(f.startswith(r) for r in roots) and not f.startswith(include)

    # the msl headers come first in the dump and need no reading: start at the first checked location
    first = next((m for m in re.finditer(r"((?:%s)[^\s<>',:]+):\d+:\d+" % "|".join(map(re.escape, roots)), dump)
                  if checked(m.group(1))), None)
    if not first:
        return []
    sources, out = {}, []
    for (f, line, col), (kind, name) in sorted(pointer_declarations(dump[dump.rfind("\n", 0, first.start()) + 1:],
                                                            checked).items()):
        if f not in sources:
            sources[f] = (Source(cpp, cpp.split("\n").index('#line 1 "%s"' % metal) + 1) if f == metal
                          else Source(pathlib.Path(f).read_text()))
        s = sources[f]
        if line > len(s.lines):
            continue  # not a line of the file (the translation's #line-numbered appendix)
        pos = s.offset(line, col)
        if s.masked[pos:pos + len(name)] != name:
            continue  # spelled by a macro
        start = declaration_start(s.masked, pos, group=False)
        decl = s.masked[start:pos]
        if kind in ("VarDecl", "FieldDecl") and start > 0 and s.masked[start - 1] == ",":
            # `device float *a, *b`: b's levels are its own `*`s with the group's type before them
            group = s.masked[declaration_start(s.masked, pos, group=True):start]
            decl = split_top(split_top(group, ",")[0][0], "*&=")[0][0] + decl
        if re.search(r"\bauto\b", decl):
            continue
        for error in spaces_errors(decl):
            out.append("%s:%d:%d: error: '%s': %s\n" % (f, line, col, " ".join((decl + name).split()), error))
    return out


COMMON = ["-std=c++17", "-Wno-unknown-attributes", "-fno-color-diagnostics", "-I", str(EMULATOR / "include"),
          "-DFGEMU_STRICT_ADDRESS_SPACES=1"]


@functools.lru_cache(maxsize=None)
def precompiled_msl_h(clang, flags):
    """Flags that use msl/msl.h precompiled (once per process, a few tenths of a second): each
    file then parses in half the time and its AST dump leaves out the headers' declarations
    (a tenth of the text). No flags where that fails: each file then reports the error."""
    tmp = tempfile.mkdtemp(prefix="msl_lint_")
    atexit.register(shutil.rmtree, tmp, True)
    pch = os.path.join(tmp, "msl.h.pch")
    r = subprocess.run([clang, "-x", "c++-header", *COMMON, *flags, str(EMULATOR / "include" / "msl" / "msl.h"),
                        "-o", pch], capture_output=True)
    return ("-include-pch", pch) if r.returncode == 0 else ()


def check(path, clang, flags):
    """(ok, diagnostics) for one .metal file."""
    path = pathlib.Path(path).resolve()
    try:
        cpp = msl2cpp.translate(path.read_text(), str(path), strict=True)
    except msl2cpp.TranslateError as e:
        return False, "msl2cpp: %s\n" % e
    # the AST dump is for explicit_space_errors
    cmd = [clang, "-x", "c++", *COMMON, *flags, *precompiled_msl_h(clang, tuple(flags)), "-fsyntax-only",
           "-Xclang", "-ast-dump", "-I", str(path.parent), "-I", str(ROOT / "src" / "shaders"),
           "-I", str(ROOT / "src" / "cpp"), "-"]
    r = subprocess.run(cmd, input=cpp, capture_output=True, text=True)
    errors = explicit_space_errors(r.stdout, str(path), cpp)
    return r.returncode == 0 and not errors, readable(r.stderr) + "".join(errors)


def lint(files, clang, jobs=None):
    """{path: (ok, diagnostics)} for every file."""
    flags = half_flags(clang)
    precompiled_msl_h(clang, tuple(flags))  # once, before the threads
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
