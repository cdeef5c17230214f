"""bench/decode_window.py's aggregate decode tokens/s (bench/load_test.py's headline column), on
made-up arrival times whose answers are worked out by hand below. No timing is measured."""
from __future__ import annotations

import math

import pytest

from bench_scripts import load_bench_script


def load():
    return load_bench_script("decode_window.py")


def test_two_overlapping_requests():
    dw = load()
    # a: first token at 0 s, last at 10 s, 20 tokens after the first: 2 tok/s
    # b: first at 2 s, last at 6 s, 12 tokens after the first: 3 tok/s
    spans = [dw.DecodeSpan(0.0, 10.0, 20), dw.DecodeSpan(2.0, 6.0, 12)]
    both = dw.concurrent_decode(spans, clients=2)
    # both decode over [2, 6]: 4 s; a brings 2 * 4 = 8 tokens, b all its 12: 20 / 4 = 5 tok/s
    assert both.seconds == pytest.approx(4.0)
    assert both.tokens == pytest.approx(20.0)
    assert both.tokens_per_s == pytest.approx(5.0)
    one = dw.concurrent_decode(spans, clients=1)
    # at least one decodes over [0, 10]: all 32 tokens in 10 s
    assert one.seconds == pytest.approx(10.0)
    assert one.tokens_per_s == pytest.approx(3.2)


def test_time_to_first_token_and_gaps_are_left_out():
    dw = load()
    # one client, two requests one after the other: the second's prefill (10 s to 11 s) is no
    # decode time; 9 tokens over 1..10 and 4 over 11..13
    spans = [dw.DecodeSpan(1.0, 10.0, 9), dw.DecodeSpan(11.0, 13.0, 4)]
    w = dw.concurrent_decode(spans, clients=1)
    assert w.seconds == pytest.approx(11.0)         # 9 + 2
    assert w.tokens_per_s == pytest.approx(13 / 11)


def test_window_of_three_clients_staggered():
    dw = load()
    # c1 [0, 6] 12 tokens (2/s); c2 [1, 5] 4 tokens (1/s); c3 [2, 8] 24 tokens (4/s)
    spans = [dw.DecodeSpan(0, 6, 12), dw.DecodeSpan(1, 5, 4), dw.DecodeSpan(2, 8, 24)]
    w = dw.concurrent_decode(spans, clients=3)
    # all three over [2, 5]: (2 + 1 + 4) tok/s for 3 s
    assert w.seconds == pytest.approx(3.0)
    assert w.tokens == pytest.approx(21.0)
    assert w.tokens_per_s == pytest.approx(7.0)
    # two or more over [1, 6]: c1 and c2 on [1, 2] (3/s), all three on [2, 5] (7/s), c1 and c3
    # on [5, 6] (6/s): (3 + 21 + 6) tokens / 5 s
    assert dw.concurrent_decode(spans, clients=2).tokens_per_s == pytest.approx(30 / 5)


def test_no_concurrent_window_and_single_token_requests():
    dw = load()
    # never two at once: empty window, rate nan
    w = dw.concurrent_decode([dw.DecodeSpan(0, 1, 5), dw.DecodeSpan(2, 3, 5)], clients=2)
    assert w.seconds == 0 and w.tokens == 0 and math.isnan(w.tokens_per_s)
    # a one-token request (first == last, nothing after the first) decodes nothing: not open
    w = dw.concurrent_decode([dw.DecodeSpan(0, 4, 8), dw.DecodeSpan(1, 1, 0)], clients=2)
    assert w.seconds == 0
    assert math.isnan(dw.concurrent_decode([], clients=1).tokens_per_s)


def test_ratios_are_taken_against_the_same_rounds_one_client():
    lt = load_bench_script("load_test.py")
    rows = [{"round": 0, "clients": 1, "decode_per_s": 10.0, "tokens_per_s": 8.0},
            {"round": 0, "clients": 8, "decode_per_s": 30.0, "tokens_per_s": 20.0},
            {"round": 1, "clients": 1, "decode_per_s": 20.0, "tokens_per_s": 10.0},
            {"round": 1, "clients": 8, "decode_per_s": 50.0, "tokens_per_s": 35.0}]
    got = [(r["decode_ratio"], r["wall_ratio"]) for r in lt.with_ratios(rows)]
    assert got == [(1.0, 1.0), (3.0, 2.5), (1.0, 1.0), (2.5, 3.5)]
