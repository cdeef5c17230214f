"""The greedy argmax rule of core/backend.h in NumPy, written independently of forgert's own
(src/shaders/argmax.h, the CPU backend, forgert/greedy.py): each row's first largest value, but
-1 for a row holding a NaN, else -2 for one holding +inf, else -3 for one with nothing above -inf."""
from __future__ import annotations

import numpy as np

NAN, INF, NONE = -1, -2, -3


def argmax_reference(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    out = np.argmax(x, axis=1).astype(np.int32)   # NumPy too keeps the first maximum
    out[~(x > -np.inf).any(axis=1)] = NONE
    out[np.isposinf(x).any(axis=1)] = INF
    out[np.isnan(x).any(axis=1)] = NAN
    return out
