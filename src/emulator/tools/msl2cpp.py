#!/usr/bin/env python3
"""msl2cpp: translate a Metal Shading Language compute source into C++ for the CPU emulator.

The output compiles with clang against src/emulator/include (msl/msl.h) and registers
every kernel entry point with the fiber runtime. Source-level rewrites, each keeping
line numbers (a #line directive points diagnostics and runtime errors at the .metal):

  * [[...]] attributes are read (buffer/threadgroup slots, builtins, host_name,
    function_constant) and removed; standard C++ attributes stay.
  * `threadgroup T a[N];` inside a function body becomes storage shared by the
    threadgroup's fibers (fgemu::threadgroup_var, fresh and poisoned per threadgroup);
    every other `threadgroup` keyword (parameters, pointer casts) is dropped.
  * `constant T name [[function_constant(i)]];` reads the pipeline's value at run time;
    file-scope constants initialised from function constants become lazy functions.
  * C-style casts to vector types, `(float4) x`, become conversions: in clang a cast
    between same-size vectors reinterprets the bits, in MSL it converts the values.
    Functional casts `T(x)` on template type parameters likewise.
  * `template [[host_name("x")]] kernel ... f<...>;` instantiations register as "x".

--strict-address-spaces writes a file for `clang -fsyntax-only` only (tools/msl_lint.py):
`device`, `constant`, `threadgroup` and `thread` stay distinct types (msl/address_spaces.h),
threadgroup locals are `threadgroup`-qualified references, and instead of the kernel table
static_asserts check that each kernel parameter is in the address space its attribute needs.

Usage: msl2cpp.py input.metal -o output.cpp [--strict-address-spaces]
"""
import argparse
import os
import re
import sys

BUILTINS = {
    "thread_position_in_grid": "kThreadPositionInGrid",
    "thread_position_in_threadgroup": "kThreadPositionInThreadgroup",
    "threadgroup_position_in_grid": "kThreadgroupPositionInGrid",
    "threads_per_threadgroup": "kThreadsPerThreadgroup",
    "dispatch_threads_per_threadgroup": "kThreadsPerThreadgroup",
    "threadgroups_per_grid": "kThreadgroupsPerGrid",
    "threads_per_grid": "kThreadsPerGrid",
    "thread_index_in_threadgroup": "kThreadIndexInThreadgroup",
    "thread_index_in_simdgroup": "kThreadIndexInSimdgroup",
    "simdgroup_index_in_threadgroup": "kSimdgroupIndexInThreadgroup",
    "threads_per_simdgroup": "kThreadsPerSimdgroup",
    "simdgroups_per_threadgroup": "kSimdgroupsPerThreadgroup",
    "thread_execution_width": "kThreadExecutionWidth",
    "quadgroup_index_in_threadgroup": "kQuadgroupIndexInThreadgroup",
    "thread_index_in_quadgroup": "kThreadIndexInQuadgroup",
}
STANDARD_ATTRIBUTES = {"maybe_unused", "nodiscard", "likely", "unlikely", "fallthrough", "noreturn",
                       "deprecated", "clang::always_inline", "gnu::always_inline"}
VECTOR_TYPES = {"%s%d" % (t, n) for t in ("float", "half", "int", "uint", "short", "ushort", "char", "uchar",
                                          "long", "ulong") for n in (2, 3, 4)}
VECTOR_TYPES |= {"packed_" + t for t in VECTOR_TYPES if t[-1] in "24"}
IDENT = r"[A-Za-z_]\w*"


class TranslateError(Exception):
    pass


def mask(src):
    """Blank out comments, string/char literals and preprocessor lines (newlines kept),
    so that offsets in the mask equal offsets in the source and no pattern matches inside them."""
    out = list(src)
    i, n = 0, len(src)
    at_line_start = True

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if c == "\n":
            at_line_start = True
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif c == "#" and at_line_start:
            j = i
            while True:  # the logical line, with its backslash continuations
                e = src.find("\n", j)
                if e < 0:
                    e = n
                    break
                if src[e - 1] == "\\":
                    j = e + 1
                    continue
                break
            blank(i, e)
            i = e
        elif src.startswith("//", i):
            e = src.find("\n", i)
            e = n if e < 0 else e
            blank(i, e)
            i = e
        elif src.startswith("/*", i):
            e = src.find("*/", i + 2)
            e = n if e < 0 else e + 2
            blank(i, e)
            i = e
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            blank(i + 1, min(j, n))
            i = j + 1
            at_line_start = False
        else:
            at_line_start = False
            i += 1
    return "".join(out)


def depths(masked):
    """Brace depth before each offset."""
    d, out = 0, []
    for c in masked:
        out.append(d)
        if c == "{":
            d += 1
        elif c == "}":
            d -= 1
    out.append(d)
    return out


def matching(text, pos, open_c, close_c):
    d = 0
    for i in range(pos, len(text)):
        if text[i] == open_c:
            d += 1
        elif text[i] == close_c:
            d -= 1
            if d == 0:
                return i
    raise TranslateError("unbalanced %r" % open_c)


def split_top(text, sep=","):
    parts, d, cur = [], 0, []
    for c in text:
        if c in "([{<":
            d += 1
        elif c in ")]}>":
            d -= 1
        if c == sep and d == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def line_of(src, pos):
    return src.count("\n", 0, pos) + 1


def keep_lines(original, replacement):
    """Pad `replacement` with the newlines of `original` so later lines keep their numbers."""
    missing = original.count("\n") - replacement.count("\n")
    if missing < 0:
        raise TranslateError("internal: replacement adds lines")
    return replacement + "\n" * missing


class Translator:
    def __init__(self, src, path, strict=False):
        self.src = src
        self.path = path
        self.strict = strict
        self.masked = mask(src)
        self.depth = depths(self.masked)
        self.edits = []  # (start, end, text) on the original source
        self.attr_ranges = [(a, b) for a, b, _ in self.attributes()]
        self.kernels = {}  # function name -> dict(params=[(kind, slot)], template=bool, line=int)
        self.entries = []  # (host name, C++ expression of the function, kernel function name)

    def where(self, pos):
        return "%s:%d" % (self.path, line_of(self.src, pos))

    def edit(self, start, end, text):
        self.edits.append((start, end, text))

    # -- attributes ---------------------------------------------------------------------
    def attributes(self):
        """(start, end, body) of every [[...]] attribute specifier."""
        out = []
        for m in re.finditer(r"\[\[", self.masked):
            end = self.masked.find("]]", m.end())
            if end < 0:
                raise TranslateError("%s: unterminated [[" % self.where(m.start()))
            out.append((m.start(), end + 2, self.src[m.end():end]))
        return out

    def in_attribute(self, pos):
        return any(a <= pos < b for a, b in self.attr_ranges)

    def remove_attributes(self):
        for start, end, body in self.attributes():
            names = {re.match(r"\s*([\w:]+)", a).group(1) for a in split_top(body) if re.match(r"\s*[\w:]+", a)}
            if names and names <= STANDARD_ATTRIBUTES:
                continue
            if any(self.covered(start, end, e) for e in self.edits):
                continue
            self.edit(start, end, "")

    @staticmethod
    def covered(start, end, e):
        return e[0] <= start and end <= e[1]

    # -- kernels ------------------------------------------------------------------------
    def parse_param(self, text, pos, used_slots, next_slot):
        m = re.search(r"\[\[(.*?)\]\]", text, re.S)
        kind = slot = None
        if m:
            for attr in split_top(m.group(1)):
                a = re.match(r"(\w+)\s*(?:\((.*)\))?$", attr.strip(), re.S)
                if not a:
                    continue
                name, arg = a.group(1), a.group(2)
                if name == "buffer":
                    kind, slot = "kBuffer", int(arg, 0)
                elif name == "threadgroup":
                    kind, slot = "kThreadgroup", int(arg, 0)
                elif name in BUILTINS:
                    kind, slot = BUILTINS[name], 0
                elif name == "function_constant":
                    raise TranslateError("%s: [[function_constant]] on a kernel parameter is not supported by the "
                                         "emulator" % self.where(pos))
        if kind is None:
            if "*" in text or "&" in text:  # buffer without an explicit index: the next free slot
                while next_slot[0] in used_slots:
                    next_slot[0] += 1
                used_slots.add(next_slot[0])
                kind, slot = "kBuffer", next_slot[0]
            else:
                raise TranslateError("%s: kernel parameter %r has no attribute the emulator understands"
                                     % (self.where(pos), " ".join(text.split())))
        return kind, slot

    def find_kernels(self):
        pat = r"(?:\bkernel\b|\[\[\s*kernel\s*\]\])\s+void\s+(%s)\s*\(" % IDENT
        for m in re.finditer(pat, self.masked):
            name = m.group(1)
            open_p = m.end() - 1
            close_p = matching(self.masked, open_p, "(", ")")
            params_text = self.src[open_p + 1:close_p]
            used = {int(s, 0) for s in re.findall(r"\[\[[^\]]*\bbuffer\s*\(\s*(\w+)\s*\)", params_text)}
            next_slot = [0]
            texts = split_top(params_text)
            params = [self.parse_param(p, m.start(), used, next_slot) for p in texts]
            # each parameter's line and text, for the strict mode's diagnostics
            lines = [line_of(self.src, self.src.find(p, open_p)) for p in texts]
            decls = [(n, " ".join(p.split())) for n, p in zip(lines, texts)]
            head = self.masked[max(0, m.start() - 300):m.start()]
            is_template = re.search(r"template\s*<[^;{}]*>\s*$", head) is not None
            host = re.search(r'\[\[\s*host_name\s*\(\s*"([^"]+)"\s*\)\s*\]\]\s*$', self.src[max(0, m.start() - 200):m.start()])
            if name in self.kernels:
                raise TranslateError("%s: kernel %s defined twice" % (self.where(m.start()), name))
            self.kernels[name] = {"params": params, "decls": decls, "template": is_template,
                                  "host": host.group(1) if host else name}

    def find_instantiations(self):
        for m in re.finditer(r"\btemplate\s*\[\[\s*host_name\s*\(\s*\"([^\"]*)\"\s*\)\s*\]\]", self.src):
            if self.masked[m.start()] != "t":
                continue  # inside a comment
            host = m.group(1)
            semi = self.masked.find(";", m.end())
            stmt = self.masked[m.end():semi]
            found = None
            for k in re.finditer(r"\b(%s)\s*<" % IDENT, stmt):
                if k.group(1) in self.kernels:
                    lt = m.end() + k.end() - 1
                    gt = matching(self.masked, lt, "<", ">")
                    found = (k.group(1), self.src[m.end() + k.start(1):gt + 1])
                    break
            if not found:
                raise TranslateError("%s: instantiation %r names no kernel template of this file"
                                     % (self.where(m.start()), host))
            self.entries.append((host, " ".join(found[1].split()), found[0]))

    # -- function constants --------------------------------------------------------------
    def function_constants(self):
        lazy = {}  # name -> C++ expression that reads it
        decls = []  # (start, end, replacement builder)
        pat = r"\bconstant\s+([\w:<>, ]+?)\s+(%s)\s*\[\[\s*function_constant\s*\(([^)]*)\)\s*\]\]\s*;" % IDENT
        for m in re.finditer(pat, self.masked):
            t, name, idx = m.group(1).strip(), m.group(2), self.src[m.start(3):m.end(3)].strip()
            var = "__fgemu_fc_" + name
            lazy[name] = var + ".get()"
            text = 'static const ::fgemu::FunctionConstant<%s> %s{%s, "%s"};' % (t, var, idx, name)
            decls.append((m.start(), m.end(), text, None))
        if not lazy:
            return
        # file-scope constants computed from function constants: evaluated per use
        changed = True
        derived = {}
        while changed:
            changed = False
            for m in re.finditer(r"\bconstant\s+([\w:<>, ]+?)\s+(%s)\s*=([^;]*);" % IDENT, self.masked):
                name = m.group(2)
                if self.depth[m.start()] != 0 or name in lazy or "constexpr" in m.group(1):
                    continue
                if any(re.search(r"\b%s\b" % re.escape(n), m.group(3)) for n in lazy):
                    lazy[name] = "__fgemu_fcd_%s()" % name
                    derived[name] = m
                    changed = True
        for name, m in derived.items():
            decls.append((m.start(), m.end(), None, (m.group(1).strip(), name, self.src[m.start(3):m.end(3)])))
        ranges = [(s, e) for s, e, _, _ in decls]
        for s, e, text, parts in decls:
            if parts:
                t, name, expr = parts
                text = "static inline %s __fgemu_fcd_%s() { return %s; }" % (t, name, self.substitute(expr, lazy))
            self.edit(s, e, keep_lines(self.src[s:e], text))
        # is_function_constant_defined(name) first, then every other use of the names
        for m in re.finditer(r"\bis_function_constant_defined\s*\(\s*(%s)\s*\)" % IDENT, self.masked):
            name = m.group(1)
            if name not in lazy or name in derived:
                raise TranslateError("%s: %s is not a function constant" % (self.where(m.start()), name))
            if not any(s <= m.start() < e for s, e in ranges):
                self.edit(m.start(), m.end(), "__fgemu_fc_%s.defined()" % name)
                ranges.append((m.start(), m.end()))
        names = "|".join(re.escape(n) for n in lazy)
        for m in re.finditer(r"(?<![\w.])(?<!->)(?<!::)\b(%s)\b" % names, self.masked):
            if any(s <= m.start() < e for s, e in ranges) or self.in_attribute(m.start()):
                continue
            self.edit(m.start(), m.end(), "(%s)" % lazy[m.group(1)])

    @staticmethod
    def substitute(expr, lazy):
        expr = re.sub(r"\bis_function_constant_defined\s*\(\s*(%s)\s*\)" % IDENT,
                      lambda m: "__fgemu_fc_%s.defined()" % m.group(1), expr)
        names = "|".join(re.escape(n) for n in lazy)
        return re.sub(r"(?<![\w.])(?<!->)(?<!::)\b(%s)\b" % names, lambda m: "(%s)" % lazy[m.group(1)], expr)

    # -- threadgroup ---------------------------------------------------------------------
    def threadgroup_keyword(self):
        count = 0
        for m in re.finditer(r"\bthreadgroup\b", self.masked):
            s = m.start()
            if self.in_attribute(s):
                continue
            if self.depth[s] > 0:
                prev = self.masked[:s].rstrip()
                at_statement_start = not prev or prev[-1] in ";{}"
                semi = self.masked.find(";", s)
                body = self.masked[m.end():semi]
                # `threadgroup T* p = ...` is a pointer; `threadgroup T a[32 * 32];` an array
                # (its dimensions may hold a `*`)
                if at_statement_start and not re.search(r"[*&=(]", re.sub(r"\[[^\]]*\]", "[]", body)):
                    count += 1
                    self.edit(s, semi + 1, keep_lines(self.src[s:semi + 1],
                                                      self.threadgroup_local(body, count, s)))
                    continue
            if not self.strict:
                self.edit(s, m.end(), "")

    def threadgroup_local(self, body, k, pos):
        parts = split_top(body)
        first = re.match(r"^(.*\S)\s+(%s)\s*((?:\[[^\]]*\]\s*)*)$" % IDENT, parts[0], re.S)
        if not first:
            raise TranslateError("%s: cannot parse threadgroup declaration %r" % (self.where(pos), body.strip()))
        type_ = first.group(1)
        decls = [(first.group(2), first.group(3))]
        for p in parts[1:]:
            d = re.match(r"^(%s)\s*((?:\[[^\]]*\]\s*)*)$" % IDENT, p, re.S)
            if not d:
                raise TranslateError("%s: cannot parse threadgroup declarator %r" % (self.where(pos), p))
            decls.append((d.group(1), d.group(2)))
        s, v = "__fgemu_tg_%d" % k, "__fgemu_tgv_%d" % k
        members = " ".join("%s %s%s;" % (type_, n, " ".join(dims.split())) for n, dims in decls)
        refs = " ".join("auto& %s = %s.%s;" % (n, v, n) for n, _ in decls)
        # strict: a `threadgroup S&`, so the address of a member is a `threadgroup T*`
        ref = "threadgroup %s& %s = ::fgemu::threadgroup_ref" if self.strict else "%s& %s = ::fgemu::threadgroup_var"
        return "struct %s { %s }; %s<%s>(); %s" % (
            " ".join(s.split()), " ".join(members.split()), ref % (s, v), s, refs)

    # -- output --------------------------------------------------------------------------
    def apply(self, text, edits):
        edits = sorted(edits, key=lambda e: (e[0], e[1]))
        out, last = [], 0
        for s, e, r in edits:
            if s < last:
                raise TranslateError("internal: overlapping rewrites near %s" % self.where(s))
            out.append(text[last:s])
            out.append(r)
            last = e
        out.append(text[last:])
        return "".join(out)

    def registration(self):
        for name, k in self.kernels.items():
            if not k["template"]:
                self.entries.append((k["host"], name, name))
        hosts = set()
        for host, _, _ in self.entries:
            if host in hosts:
                raise TranslateError("%s: two kernels are named %r" % (self.path, host))
            hosts.add(host)
        if self.strict:
            return self.parameter_space_checks()
        lines = ["", "// ---- generated by msl2cpp.py: kernel table entries ----", '#include "msl/bind.h"',
                 "namespace {"]
        for i, (host, expr, kname) in enumerate(self.entries):
            params = self.kernels[kname]["params"]
            specs = ", ".join("{::fgemu::%s, %d, 0, false}" % p for p in params) or "{-1, -1, 0, false}"
            lines += [
                "::fgemu::ParamSpec __fgemu_params_%d[] = {%s};" % (i, specs),
                "void __fgemu_entry_%d(const fg_emu_bindings& b, const ::fgemu::ThreadIds& t, void* const* tg) {"
                " ::fgemu::invoke(&%s, __fgemu_params_%d, b, t, tg); }" % (i, expr, i),
                'const ::fgemu::KernelInfo __fgemu_info_%d = {"%s", &__fgemu_entry_%d, '
                "::fgemu::typed_params<%d>(&%s, __fgemu_params_%d), %d, \"%s\"};"
                % (i, host, i, len(params), expr, i, len(params), os.path.basename(self.path)),
                "const ::fgemu::KernelRegistrar __fgemu_registrar_%d(&__fgemu_info_%d);" % (i, i),
            ]
        lines.append("}  // namespace")
        return "\n".join(lines) + "\n"

    def parameter_space_checks(self):
        """Strict mode: MSL wants [[buffer(n)]] parameters to be device or constant pointers or
        references and [[threadgroup(n)]] ones threadgroup pointers; the kernel table is left out."""
        lines = ["", "// ---- generated by msl2cpp.py --strict-address-spaces: kernel parameters ----"]
        for host, expr, kname in self.entries:
            k = self.kernels[kname]
            for i, ((kind, _), (line, decl)) in enumerate(zip(k["params"], k["decls"])):
                if kind not in ("kBuffer", "kThreadgroup"):
                    continue
                need = "device or constant" if kind == "kBuffer" else "threadgroup"
                lines += ['#line %d "%s"' % (line, self.path),
                          'static_assert(::fgemu::%s_param_ok<::fgemu::kernel_param_t<decltype(&%s), %d>>, '
                          '"kernel %s: parameter \'%s\' must be a pointer or reference to %s memory");'
                          % (kind[1:].lower(), expr, i, host, decl.replace("\\", "").replace('"', '\\"'), need)]
        return "\n".join(lines) + "\n"

    def translate(self):
        self.find_kernels()
        self.find_instantiations()
        self.function_constants()
        self.threadgroup_keyword()
        self.remove_attributes()
        text = self.apply(self.src, self.edits)
        text = rewrite_casts(text, self.template_params(text))
        head = "#define FGEMU_STRICT_ADDRESS_SPACES 1\n" if self.strict else ""
        return '%s#include "msl/msl.h"\n#line 1 "%s"\n%s%s' % (head, self.path, text, self.registration())

    @staticmethod
    def template_params(text):
        names = set()
        for m in re.finditer(r"template\s*<([^;{}]*?)>", mask(text)):
            names |= set(re.findall(r"\b(?:typename|class)\s+(%s)" % IDENT, m.group(1)))
        return names


# -- casts ------------------------------------------------------------------------------
NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[fFhHuUlL]*")


def skip_ws(t, p):
    while p < len(t) and t[p].isspace():
        p += 1
    return p


def unary_end(t, p, type_names):
    """End offset of the unary expression starting at p (the operand of a C-style cast)."""
    p = skip_ws(t, p)
    if t.startswith("++", p) or t.startswith("--", p):
        return unary_end(t, p + 2, type_names)
    if p < len(t) and t[p] in "-+!~*&":
        return unary_end(t, p + 1, type_names)
    if p < len(t) and t[p] == "(":
        q = matching(t, p, "(", ")")
        inner = t[p + 1:q].strip()
        if inner in type_names or inner.endswith("*") or re.fullmatch(r"(?:const\s+)?(?:unsigned\s+)?\w+", inner) and \
                re.fullmatch(r"(?:float|half|int|uint|short|ushort|char|uchar|long|ulong|bool|bfloat)", inner):
            return unary_end(t, q + 1, type_names)  # nested cast
        p = q + 1
    else:
        m = NUMBER.match(t, p) or re.compile(r"(?:::)?%s(?:::%s)*" % (IDENT, IDENT)).match(t, p)
        if not m:
            raise TranslateError("cannot find the operand of a cast near %r" % t[p:p + 40])
        p = m.end()
        if p < len(t) and t[p] == "<":  # template-id such as ::fgemu::vcast<half4>(...)
            try:
                q = matching(t, p, "<", ">")
                if t[skip_ws(t, q + 1):skip_ws(t, q + 1) + 1] == "(":
                    p = q + 1
            except TranslateError:
                pass
    while True:
        q = skip_ws(t, p)
        if q < len(t) and t[q] == "[":
            p = matching(t, q, "[", "]") + 1
        elif q < len(t) and t[q] == "(":
            p = matching(t, q, "(", ")") + 1
        elif t.startswith("->", q) or (q < len(t) and t[q] == "." and not t[q + 1:q + 2].isdigit()):
            q = skip_ws(t, q + (2 if t[q] == "-" else 1))
            m = re.compile(IDENT).match(t, q)
            if not m:
                return p
            p = m.end()
        elif t.startswith("++", q) or t.startswith("--", q):
            p = q + 2
        else:
            return p


def rewrite_casts(text, template_names):
    """(V) x -> ::fgemu::vcast<V>(x) for vector types V (and template parameters), and
    T(x) -> ::fgemu::vcast<T>(x) for template type parameters T."""
    type_names = VECTOR_TYPES | template_names
    names = "|".join(sorted(type_names, key=len, reverse=True))
    cast = re.compile(r"\(\s*(?:const\s+)?(%s)\s*\)" % names)
    while True:
        masked = mask(text)
        hits = []
        for m in cast.finditer(masked):
            before = masked[:m.start()].rstrip()
            word = re.search(r"(\w+)$", before)
            if word and word.group(1) not in ("return", "case", "else", "do"):
                continue  # sizeof(float4), f(float4)
            if before.endswith(">"):
                continue  # template-id followed by (T)
            nxt = skip_ws(masked, m.end())
            if nxt >= len(masked) or not (masked[nxt].isalnum() or masked[nxt] in "_(-+!~*&.:"):
                continue
            if masked[nxt] in "-+*&" and masked[nxt + 1:nxt + 2] == "=":
                continue
            hits.append(m)
        if not hits:
            break
        m = hits[-1]  # innermost-last first, so nested casts see already rewritten operands
        end = unary_end(masked, m.end(), type_names)
        operand = text[m.end():end].lstrip(" \t")
        text = "%s::fgemu::vcast<%s>(%s)%s" % (text[:m.start()], m.group(1), operand, text[end:])
    if template_names:
        masked = mask(text)
        pat = re.compile(r"(?<![\w.:>~])(%s)\s*\(" % "|".join(sorted(template_names, key=len, reverse=True)))
        edits = []
        for m in pat.finditer(masked):
            before = masked[:m.start()].rstrip()
            if before.endswith(("typename", "class", "struct", "->")):
                continue
            edits.append(m)
        for m in reversed(edits):
            text = "%s::fgemu::vcast<%s>%s" % (text[:m.start()], m.group(1), text[m.end(1):])
    return text


def translate(src, path, strict=False):
    return Translator(src, path, strict).translate()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--strict-address-spaces", action="store_true",
                    help="output for the syntax-only address-space check (not for running)")
    a = ap.parse_args()
    path = os.path.abspath(a.input)
    with open(path) as f:
        src = f.read()
    try:
        out = translate(src, path, a.strict_address_spaces)
    except TranslateError as e:
        sys.exit("msl2cpp: %s" % e)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(out)
    os.replace(tmp, a.output)


if __name__ == "__main__":
    main()
