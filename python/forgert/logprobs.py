"""A sampled token's log-probability (and the most likely alternatives) from its logits row:
shared by the single-sequence path (Model) and the batch (batch.py), so both report the same."""
from __future__ import annotations

import numpy as np

from .completion import TokenLogprob


def token_logprob(logits, tok: int, n_top: int, tokenizer) -> TokenLogprob:
    """logits: the raw row [vocab] the token was drawn from (before bias, mask or temperature);
    n_top: how many most likely alternatives to list, best first."""
    x = np.asarray(logits, dtype=np.float64)
    lp = x - x.max()
    lp -= np.log(np.exp(lp).sum())
    top = []
    if n_top:
        idx = np.argpartition(-lp, n_top - 1)[:n_top]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        top = [(tokenizer.decode([int(i)]), float(lp[i])) for i in idx]
    return TokenLogprob(tokenizer.decode([tok]), float(lp[tok]), top)
