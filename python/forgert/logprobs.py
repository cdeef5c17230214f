"""A sampled token's log-probability (and the most likely alternatives) from its logits row:
shared by the single-sequence path (Model) and the batch (batch.py), so both report the same.
A prompt's tokens are scored in C++ by the engine pass itself (_core.RowScores, the same
reduction): scored_logprobs turns its arrays into the same TokenLogprob entries."""
from __future__ import annotations

import numpy as np

from .completion import TokenLogprob
from .tokenizer import REPLACEMENT


def token_logprob(logits, tok: int, n_top: int, tokenizer) -> TokenLogprob:
    """logits: the raw row [vocab] the token was drawn from (before bias, mask or temperature);
    n_top: how many most likely alternatives to list, best first."""
    # The log-sum-exp over the row in f64 (exp in f32: the row is what costs), then only the
    # entries wanted: a logits row minus one constant keeps its order, so the top-n are the
    # largest logits. Differs from a f64 log-softmax of the whole row by ~1e-9.
    x = np.asarray(logits, dtype=np.float32).reshape(-1)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum(dtype=np.float64)))
    top_ids = [int(i) for i in _largest(x, n_top)] if n_top else []
    top = [(tokenizer.token_piece(i), float(x[i]) - lse) for i in top_ids]
    return TokenLogprob(tokenizer.token_piece(tok), float(x[tok]) - lse, top,
                        tokenizer.token_bytes(tok), [tokenizer.token_bytes(i) for i in top_ids])


def _largest(x: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest entries of x [vocab], largest first, ties to the lower index.
    The n-th largest of a 1-in-64 sample is at most the n-th largest of x, so the entries at or
    above it hold the top n: a select over a few hundred candidates instead of the whole row
    (10x faster at 49k)."""
    if len(x) >= 64 * n:
        cut = np.partition(x[::64], -n)[-n]
        candidates = np.flatnonzero(x >= cut)
    else:
        candidates = np.arange(len(x))
    if len(candidates) > n:     # those at or above the n-th largest (all of a tie across the cut)
        c = x[candidates]
        candidates = candidates[c >= np.partition(c, len(c) - n)[len(c) - n]]
    # candidates are in increasing index order: a tie goes to the lower id (as row_scores.cpp)
    return candidates[np.argsort(-x[candidates], kind="stable")[:n]]


def scored_logprobs(scores, tokenizer) -> list[TokenLogprob]:
    """[TokenLogprob] of each target of a _core.RowScores the engine filled: the token after each
    evaluated row, with its row's top_k alternatives (ties to the lower id, as _largest)."""
    out = []
    for tok, lp, ids, vals in zip(scores.targets, scores.logprob, scores.top_ids, scores.top_logprob):
        piece = tokenizer.token_piece(int(tok))
        top = [(tokenizer.token_piece(int(i)), float(v)) for i, v in zip(ids, vals)]
        top_bytes = [_partial_bytes(t, int(i), tokenizer) for (t, _), i in zip(top, ids)]
        out.append(TokenLogprob(piece, float(lp), top, _partial_bytes(piece, int(tok), tokenizer),
                                top_bytes if any(b is not None for b in top_bytes) else None))
    return out


def first_prompt_logprob(token_id: int, tokenizer) -> TokenLogprob:
    """A prompt's first token: nothing before it scores it (logprob None, as OpenAI's echo)."""
    text = tokenizer.decode([int(token_id)])
    return TokenLogprob(text, None, [], _partial_bytes(text, int(token_id), tokenizer))


def _partial_bytes(piece: str, token_id: int, tokenizer) -> bytes | None:
    """A prompt token's bytes where its text alone is not whole characters (U+FFFD in it), else
    None (its text's UTF-8: token_bytes costs a decode, which a long prompt's tokens skip)."""
    return tokenizer.token_bytes(token_id) if REPLACEMENT in piece else None
