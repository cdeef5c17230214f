"""Bounds on rendering a chat template. The template comes from the model file, so it may be
hostile: jinja2's sandbox stops it reaching Python's internals, not exhausting memory
(`{{ 'a' * 10**10 }}`, a string doubled in a loop) or time (nested loops, a macro calling itself
twice per level). BoundedSandbox refuses, with a ChatTemplateError naming the limit:

- any string, list or dict it makes (by `*`, `+`, `~`, `%`, a filter or a method) or writes out
  longer than `max_chars`: a model's is max_chars_for(n_ctx, its longest token), CHARS_FACTOR
  times the characters of a context full of its longest tokens, far more than any prompt that
  fits its context;
- an integer past MAX_INT_BITS bits (`10**100000`, a number squared in a loop);
- a format width or precision of 8 or more digits (`'%999999999d'`, `'{:>999999999}'`);
- past MAX_STEPS steps in one render (a loop's iteration is one, a call, a macro's included,
  CALL_STEPS);
- past WRITE_FACTOR * max_chars characters written by its expressions in one render (to its
  output, or to a macro's or {% set %} block's buffer, which holds them until its end);
- recursion past Python's depth limit (a macro or recursive loop calling itself).

Real templates (a few calls and iterations per message) stay far inside these.
"""
from __future__ import annotations

import contextvars
import functools
import re

from jinja2 import Environment, nodes
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError

MAX_STEPS = 4_000_000        # loop iterations and calls in one render
CALL_STEPS = 8               # steps a call counts for (a macro call takes as long as ~30 loop iterations)
WRITE_FACTOR = 8             # characters written in one render (buffers too): WRITE_FACTOR * max_chars
MAX_INT_BITS = 1 << 16       # an integer's size
DEFAULT_MAX_CHARS = 1 << 24  # max_chars of a template rendered without a model
CHARS_FACTOR = 4             # max_chars_for: the margin over a full context's characters
_SEQUENCES = (str, bytes, list, tuple)
_SIZED = _SEQUENCES + (dict,)
MAX_JSON_INDENT = 1000   # tojson's indent, in characters
_HUGE_WIDTH = re.compile(r"\d{8,}")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")   # '{:>{}}': a width from an argument

# a render's budgets: [steps left, characters left to write]; None outside a render
_budget = contextvars.ContextVar("forgert_chat_template_budget", default=None)


DEFAULT_LIMIT_NOTE = "the limit of a template rendered without a model"
MODEL_LIMIT_NOTE = f"{CHARS_FACTOR} times the characters the model's context holds at its longest token"


def max_chars_for(n_ctx: int, longest_token: int) -> int:
    """A model's limit: CHARS_FACTOR times the characters its context holds at its longest token
    (at least 16 characters a token)."""
    return n_ctx * max(longest_token, 16) * CHARS_FACTOR




class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})   # also keeps them from compile-time folding

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS, limit_note: str = DEFAULT_LIMIT_NOTE, **options):
        """limit_note: where max_chars comes from, for the messages."""
        super().__init__(**options)
        self.max_chars = int(max_chars)
        self.limit_note = limit_note
        self.concat = self._bounded_concat   # a macro's or {% set %} block's output

    # -- sizes ----------------------------------------------------------------------------------
    def too_long(self, what: str, n: int) -> ChatTemplateError:
        return ChatTemplateError(f"the model's chat template was stopped: {what} of {n} items would pass the "
                                 f"{self.max_chars}-character limit on a rendering ({self.limit_note})")

    def check_size(self, value, what: str = "a value"):
        if isinstance(value, _SIZED) and len(value) > self.max_chars:
            raise self.too_long(what, len(value))
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            raise ChatTemplateError(f"the model's chat template was stopped: an integer of {value.bit_length()} bits "
                                    f"passes the {MAX_INT_BITS}-bit limit")
        return value

    def _bounded_concat(self, parts) -> str:
        parts = list(parts)
        n = sum(len(p) for p in parts)
        if n > self.max_chars:
            raise self.too_long("a block's output", n)
        return "".join(parts)

    def _check_width(self, fmt) -> None:
        if isinstance(fmt, str) and _HUGE_WIDTH.search(fmt):
            raise ChatTemplateError(f"the model's chat template was stopped: a format width or precision of 8 or "
                                    f"more digits in {fmt[:60]!r}")

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and isinstance(n, int) and len(seq) * max(n, 0) > self.max_chars:
                    raise self.too_long(f"a repetition ({len(seq)} items * {n})", len(seq) * n)
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise self._int_error(left.bit_length() + right.bit_length())
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                bits = right * (abs(left).bit_length() - 1)
                if bits > MAX_INT_BITS:
                    raise self._int_error(bits)
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                if len(left) + len(right) > self.max_chars:
                    raise self.too_long("a concatenation", len(left) + len(right))
        elif operator == "%":
            self._check_width(left)
            if isinstance(left, str) and "*" in left:   # '%*s': widths from the arguments
                for v in right if isinstance(right, tuple) else (right,):
                    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > self.max_chars:
                        raise self.too_long("a '*' format width", abs(v))
        return self.check_size(super().call_binop(context, operator, left, right), f"the result of {operator!r}")

    @staticmethod
    def _int_error(bits: int) -> ChatTemplateError:
        return ChatTemplateError(f"the model's chat template was stopped: an integer of about {bits} bits "
                                 f"would pass the {MAX_INT_BITS}-bit limit")

    def wrap_str_format(self, value):
        """str.format / format_map: a width in the format string, or one given as an argument to
        a nested field ('{:>{}}'), checked before the string is made."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        self._check_width(fmt)
        nested = _NESTED_FIELD.search(fmt) is not None

        def bounded(*args, **kwargs):
            if nested:
                for v in list(args) + list(kwargs.values()) + [w for a in args if isinstance(a, dict) for w in a.values()]:
                    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > self.max_chars:
                        raise self.too_long("a nested format width", abs(v))
            return self.check_size(wrapped(*args, **kwargs), "a formatted string")
        return bounded

    # -- steps ----------------------------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        left = _budget.get()
        if left is not None:
            left[0] -= n
            if left[0] < 0:
                raise ChatTemplateError(f"the model's chat template was stopped after {MAX_STEPS} steps (a loop "
                                        f"iteration is one, a call {CALL_STEPS}) in one rendering")

    def written(self, value):
        """An expression's output (to the rendering, or to a macro's or block's buffer, which
        holds it until its end): counted against the characters a render may write."""
        left = _budget.get()
        if left is not None:
            left[1] -= len(value) if isinstance(value, str) else len(str(value))
            if left[1] < 0:
                raise ChatTemplateError(f"the model's chat template was stopped: it wrote {WRITE_FACTOR * self.max_chars} "
                                        f"characters (to its output and its macros' and blocks' buffers), {WRITE_FACTOR} "
                                        f"times the {self.max_chars}-character limit on a rendering")
        return value

    def call(__self, __context, __obj, *args, **kwargs):
        __self.step(CALL_STEPS)
        __self._check_call(__obj, args)
        return __self.check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def _check_call(self, obj, args) -> None:
        """Method calls that would make a string past the limit: padding, replacing, joining."""
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if not isinstance(owner, str):
            return
        if name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
            if args[0] > self.max_chars:
                raise self.too_long(f"str.{name}", args[0])
        elif name == "expandtabs":
            width = args[0] if args and isinstance(args[0], int) else 8
            if len(owner) * width > self.max_chars:
                raise self.too_long("str.expandtabs", len(owner) * width)
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            n = len(owner) + (owner.count(args[0]) if args[0] else len(owner) + 1) * len(args[1])
            if n > self.max_chars:
                raise self.too_long("str.replace", n)
        elif name == "join" and args:
            n = len(owner) * len(args[0]) if hasattr(args[0], "__len__") else 0
            if n > self.max_chars:
                raise self.too_long("str.join", n)

    def counted(self, iterable):
        """A loop's iterable, one step per item."""
        for item in iterable:
            self.step()
            yield item

    # -- compiling --------------------------------------------------------------------------------
    def bound_filters(self) -> None:
        """Every filter's arguments and result checked (center, indent, join and replace amplify)."""
        for name, f in list(self.filters.items()):
            self.filters[name] = self._bounded_filter(name, f)
        self.filters["forgert_counted"] = self.counted
        self.filters["forgert_sized"] = lambda value: self.check_size(value, "a '~' concatenation")
        self.filters["forgert_written"] = self.written
        self.globals["lipsum"] = self._bounded_lipsum(self.globals["lipsum"])

    def _bounded_lipsum(self, lipsum):
        @functools.wraps(lipsum)
        def bounded(n=5, html=True, min=20, max=100):
            size = 12 * abs(n) * abs(max)   # a word with its space is under 12 characters
            if size > self.max_chars:
                raise self.too_long(f"lipsum({n}, max={max})", size)
            return lipsum(n, html, min, max)
        return bounded

    def _bounded_filter(self, name, f):
        env = self

        @functools.wraps(f)   # keeps jinja's pass_context / pass_environment marks
        def bounded(*args, **kwargs):
            values = [a for a in args if not isinstance(a, (Context, EvalContext, Environment))]
            if name in _ESTIMATES and values:
                _ESTIMATES[name](env, values, kwargs)
            env.step()
            return env.check_size(f(*args, **kwargs), f"filter '{name}''s result")
        return bounded

    def bounded_template(self, source: str):
        """The template compiled with each loop's iterable counted, each '~' result sized and each
        expression's output counted."""
        tree = self.parse(source)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "forgert_counted", [], [], None, None, lineno=loop.lineno)
        for out in tree.find_all(nodes.Output):
            out.nodes = [n if isinstance(n, nodes.TemplateData) else
                         nodes.Filter(n, "forgert_written", [], [], None, None, lineno=n.lineno) for n in out.nodes]
        for parent in list(tree.find_all(nodes.Node)):
            for field in parent.fields:
                child = getattr(parent, field)
                if isinstance(child, nodes.Concat):
                    setattr(parent, field, _sized(child))
                elif isinstance(child, list):
                    setattr(parent, field, [_sized(c) if isinstance(c, nodes.Concat) else c for c in child])
        return self.from_string(tree)


def _sized(node):
    return nodes.Filter(node, "forgert_sized", [], [], None, None, lineno=node.lineno)


# Filters that amplify, each refused before its result is made where that would pass the limit:
# values is [input, positional arguments...].
def _join(env, values, kwargs):
    items, sep = values[0], (values[1] if len(values) > 1 else kwargs.get("d", ""))
    if hasattr(items, "__len__") and isinstance(sep, str) and len(sep) * len(items) > env.max_chars:
        raise env.too_long("filter 'join'", len(sep) * len(items))


def _replace(env, values, kwargs):
    s, old, new = (list(values) + [kwargs.get("old"), kwargs.get("new")])[:3]
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = len(s) + (s.count(old) if old else len(s) + 1) * len(new)
        if n > env.max_chars:
            raise env.too_long("filter 'replace'", n)


def _widths(filter_name):
    def check(env, values, kwargs):
        lines = str(values[0]).count("\n") + 1 if filter_name == "indent" else 1
        for v in list(values[1:]) + list(kwargs.values()):
            if isinstance(v, str):
                env._check_width(v)
                v = len(v)
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) * lines > env.max_chars:
                raise env.too_long(f"filter '{filter_name}' ({v} wide)", abs(v) * lines)
    return check


def _tojson(env, values, kwargs):
    indent = values[1] if len(values) > 1 else kwargs.get("indent")
    width = len(indent) if isinstance(indent, str) else indent
    if isinstance(width, int) and width > MAX_JSON_INDENT:
        raise ChatTemplateError(f"the model's chat template was stopped: filter 'tojson' was given an indent of "
                                f"{width}, past the {MAX_JSON_INDENT}-character limit")


_ESTIMATES = {"tojson": _tojson, "join": _join, "replace": _replace, "center": _widths("center"), "indent": _widths("indent"),
              "format": lambda env, values, kwargs: env._check_width(values[0])}


def render_budget(max_chars: int):
    """A render's budgets of steps and characters written: `with render_budget(n): ...` around
    template.generate()."""
    return _RenderBudget(max_chars)


class _RenderBudget:
    def __init__(self, max_chars: int):
        self.max_chars = max_chars

    def __enter__(self):
        self._token = _budget.set([MAX_STEPS, WRITE_FACTOR * self.max_chars])
        return self

    def __exit__(self, *exc):
        _budget.reset(self._token)
        return False
