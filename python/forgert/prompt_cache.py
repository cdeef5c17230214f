"""Saved KV-cache states for prompts that alternate: the engine's cache holds one sequence, so
two conversations taking turns would each re-evaluate their whole prompt. A PromptCache keeps
copies of sequences the engine moved away from (least recently used first out, within a byte
budget) and hands back the one sharing the longest prefix with a new prompt.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelState:
    """The K/V cache of `tokens` (positions 0..len(tokens)): f16 bits [n_layers, 2, n, kv_dim]."""
    tokens: tuple
    kv: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.kv.nbytes)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"prompt cache size must be an integer number of bytes >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._states: OrderedDict[tuple, ModelState] = OrderedDict()   # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def best(self, ids) -> tuple[ModelState | None, int]:
        """The saved state sharing the longest prefix with ids, and that prefix's length."""
        best, best_len = None, 0
        for state in self._states.values():
            n = common_prefix(state.tokens, ids)
            if n > best_len:
                best, best_len = state, n
        return best, best_len

    def put(self, state: ModelState) -> None:
        """Keeps state (most recently used), dropping the oldest ones past the budget, and any
        saved state that is a prefix of it (this one covers it)."""
        if not state.tokens or state.nbytes > self.max_bytes:
            return
        for key in [k for k in self._states if common_prefix(k, state.tokens) == len(k)]:
            self._bytes -= self._states.pop(key).nbytes
        self._states[state.tokens] = state
        self._bytes += state.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._states.popitem(last=False)
            self._bytes -= old.nbytes

    def take(self, state: ModelState) -> None:
        """Removes state (it becomes the engine's live sequence again)."""
        if self._states.pop(state.tokens, None) is not None:
            self._bytes -= state.nbytes
