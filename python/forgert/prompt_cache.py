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
    """The K/V cache of `tokens` (positions 0..len(tokens)): f16 bits [n_layers, 2, n, kv_dim] (K
    and V; [n_layers, 1, n, kv_dim] with latent attention, whose V is read from K's rows);
    a recurrent model's (Qwen3.5's) states after those tokens too, f32 [n] (None for others), and
    its checkpoints of earlier positions of them (state_checkpoints.Checkpoint); and the identity
    of the model that saved it (model_identity.ModelIdentity; None in a state made by hand or
    unpickled from a forgert before it, which load_state refuses)."""
    tokens: tuple
    kv: np.ndarray
    recurrent: np.ndarray | None = None
    checkpoints: tuple = ()
    model: object = None

    @property
    def nbytes(self) -> int:
        return (int(self.kv.nbytes) + (0 if self.recurrent is None else int(self.recurrent.nbytes))
                + sum(int(c.state.nbytes) for c in self.checkpoints))

    def resumes_at(self, ids) -> int:
        """How many of ids' tokens this state lets a prompt skip: their shared prefix, or for a
        recurrent model all of its tokens (its state cannot rewind), else its longest checkpoint
        within the shared prefix, else none."""
        n = common_prefix(self.tokens, ids)
        if self.recurrent is None or n == len(self.tokens):
            return n
        return max((len(c.tokens) for c in self.checkpoints if len(c.tokens) <= n), default=0)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resume_point(engine, slot: int, shared: int) -> int:
    """Where evaluation of a sequence may resume in `slot`, whose cache holds `shared` tokens of
    it: there, except in a model with recurrent layers, whose state holds the tokens up to the
    engine's state_position and cannot rewind: there if that is within the shared tokens, else 0."""
    if not engine.recurrent:
        return shared
    at = engine.state_position(slot)
    return at if 0 <= at <= shared else 0


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
        """The saved state sharing the longest usable prefix with ids (ModelState.resumes_at),
        and that prefix's length."""
        best, best_len = None, 0
        for state in self._states.values():
            n = state.resumes_at(ids)
            if n > best_len:
                best, best_len = state, n
        return best, best_len

    def put(self, state: ModelState) -> None:
        """Keeps state (most recently used), dropping the oldest ones past the budget, and any
        saved state that is a prefix of it (this one covers it)."""
        if state is None or not state.tokens or state.nbytes > self.max_bytes:
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
