"""Aggregate decode tokens/s of concurrent streaming requests: the rate at which N clients receive
tokens while all N are decoding at once (bench/load_test.py's headline column).

Each request contributes its decode span: from its first token's arrival to its last one's, over
which its (tokens - 1) later tokens arrive, taken as evenly spread (the per-client decode figure
makes the same assumption). Time before a request's first token (queueing, admission, prefill)
is no part of any span. The level's time is cut at every span's ends; the pieces where at least
`clients` spans are open form the concurrent decode window, and

    aggregate decode tok/s = sum over those pieces and their open spans of rate * piece length
                             / total length of those pieces

(rate = a span's tokens / its length). With one client this is that client's decode rate over
its requests' spans (the gaps between requests excluded).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple


class DecodeSpan(NamedTuple):
    first: float    # arrival time of the request's first token (s, any common clock)
    last: float     # arrival time of its last token
    tokens: int     # tokens that arrived after the first (completion tokens - 1)


class DecodeWindow(NamedTuple):
    tokens_per_s: float     # aggregate decode tok/s inside the window (nan when it is empty)
    seconds: float          # the window's total length
    tokens: float           # decode tokens inside it (a span's tokens counted pro rata)


def concurrent_decode(spans: Iterable[DecodeSpan], clients: int) -> DecodeWindow:
    """The window where at least `clients` spans decode at once, and the rate inside it."""
    live = [s for s in spans if s.last > s.first and s.tokens > 0]
    cuts = sorted({t for s in live for t in (s.first, s.last)})
    seconds = tokens = 0.0
    for a, b in zip(cuts, cuts[1:]):
        open_spans = [s for s in live if s.first <= a and s.last >= b]
        if len(open_spans) >= clients:
            seconds += b - a
            tokens += sum(s.tokens / (s.last - s.first) * (b - a) for s in open_spans)
    return DecodeWindow(tokens / seconds if seconds > 0 else float("nan"), seconds, tokens)
