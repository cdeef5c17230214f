"""Greedy tokens from the engine's argmax, checked: where a row of logits has no token to pick
(core/backend.h's argmax sentinels: a NaN, a +inf, nothing above -inf), NonFiniteLogitsError
names the problem and the position instead of decoding on with a made-up token.

Every consumer of the engine's argmax tokens goes through tokens() (Model's greedy decoding, its
pipelined steps and draft verification, the draft model, batched decoding), and a greedy choice
made in NumPy from a logits row comes from argmax(), which follows the engine's rule. Where a
verification pass gives several rows, only the rows whose tokens are used are checked: a row
after a rejected draft token is no part of the output (a sentinel never equals a draft token,
so acceptance stops at it).
"""
from __future__ import annotations

import numpy as np

from .errors import NonFiniteLogitsError

# core/backend.h: Backend::kArgmaxNaN, kArgmaxInf, kArgmaxNone.
KINDS = {-1: "NaN", -2: "+inf", -3: "all -inf"}


def error(kind: str, position: int) -> NonFiniteLogitsError:
    what = "logits that are all -inf" if kind == "all -inf" else f"non-finite logits ({kind})"
    return NonFiniteLogitsError(
        f"the model produced {what} at token position {position}: its activations overflowed or a weight "
        "holds NaN/inf (a broken or mis-converted model file, or a dtype too narrow for the model); "
        "there is no token to pick", position, kind)


def tokens(best, first_position: int) -> list[int]:
    """The engine's argmax tokens of rows at positions first_position.. as ints; raises for the
    first row that gave a sentinel."""
    out = [int(t) for t in np.asarray(best).reshape(-1)]
    for i, t in enumerate(out):
        if t < 0:
            raise error(KINDS.get(t, f"argmax sentinel {t}"), first_position + i)
    return out


def argmax(row) -> int:
    """The engine's argmax of a logits row in NumPy, sentinels included (for tokens())."""
    row = np.asarray(row).reshape(-1)
    if np.isnan(row).any():
        return -1
    if np.isposinf(row).any():
        return -2
    if not (row > -np.inf).any():
        return -3
    return int(np.argmax(row))
