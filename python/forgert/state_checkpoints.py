"""Checkpoints of a recurrent model's states, so that a conversation's next turn resumes where
its last prompt ended instead of evaluating the whole conversation again.

A slot's recurrent state (Qwen3.5's delta rule, LFM2's convolutions) holds the tokens up to one
position and cannot rewind, while its K/V rows can be reused up to any shared prefix. A chat's
next prompt shares the last prompt but not its end: templates render the previous answer their
own way (Qwen3.5 drops its thinking) and the generation prompt ("<|im_start|>assistant\\n<think>")
is replaced by the answer. So while a prompt is prefilled, the slot's state is saved a few tokens
before the prompt's end (CHECKPOINT_TAIL); a later prompt sharing that many tokens with the slot's
cache loads the state and continues from there (llama-server's context checkpoints, for the same
reason). A retried prompt (the same one again) resumes there too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompt_cache import common_prefix, resume_point

# Tokens before a prompt's end where its checkpoint is taken: more than any chat template's
# generation prompt and the re-rendered end of the previous turn (Llama 3's generation prompt is
# 4 tokens, Qwen3.5's with "<think>\n" 5); a resumed prompt evaluates these again, which costs
# little beside the conversation it skips.
CHECKPOINT_TAIL = 16
# Prompts shorter than this take no checkpoint: evaluating them again is as cheap as the copy.
MIN_CHECKPOINT_TOKENS = 64
# Checkpoints kept per slot (the newest): conversations taking turns in one slot keep theirs.
DEFAULT_PER_SLOT = 2


@dataclass(frozen=True)
class Checkpoint:
    """A slot's recurrent states (f32 [Engine.state_floats]) after `tokens`."""
    tokens: tuple
    state: np.ndarray


class StateCheckpoints:
    """The newest `per_slot` checkpoints of each slot of a recurrent model's engine."""

    def __init__(self, engine, per_slot: int = DEFAULT_PER_SLOT):
        if not isinstance(per_slot, int) or isinstance(per_slot, bool) or per_slot < 0:
            raise ValueError(f"checkpoints per slot must be an integer >= 0, got {per_slot!r}")
        self.engine, self.per_slot = engine, per_slot
        self._slots: dict[int, list[Checkpoint]] = {}   # newest last

    def __len__(self) -> int:
        return sum(len(c) for c in self._slots.values())

    @property
    def nbytes(self) -> int:
        return sum(int(c.state.nbytes) for cs in self._slots.values() for c in cs)

    @staticmethod
    def position(n_prompt: int) -> int | None:
        """Where a prompt of n_prompt tokens takes its checkpoint (None: too short to take one)."""
        at = n_prompt - 1 - CHECKPOINT_TAIL
        return at if n_prompt >= MIN_CHECKPOINT_TOKENS else None

    def save(self, slot: int, tokens) -> None:
        """Saves the slot's state, which must hold exactly `tokens` (the caller has just prefilled them)."""
        if self.per_slot == 0:
            return
        tokens = tuple(tokens)
        kept = [c for c in self._slots.get(slot, []) if c.tokens != tokens]
        kept.append(Checkpoint(tokens, np.asarray(self.engine.state_save(slot))))
        self._slots[slot] = kept[-self.per_slot:]

    def best(self, slot: int, ids, shared: int) -> Checkpoint | None:
        """The slot's checkpoint of the most of ids' first `shared` tokens (which the slot's K/V
        rows hold), or None."""
        best = None
        for c in self._slots.get(slot, []):
            n = len(c.tokens)
            if n <= shared and (best is None or n > len(best.tokens)) and common_prefix(c.tokens, ids) == n:
                best = c
        return best

    def within(self, slot: int, tokens) -> tuple:
        """The slot's checkpoints of prefixes of tokens (saved with them: prompt_cache.ModelState)."""
        return tuple(c for c in self._slots.get(slot, []) if common_prefix(c.tokens, tokens) == len(c.tokens))

    def restore(self, slot: int, checkpoints) -> None:
        """Makes checkpoints (from within()) the slot's newest again."""
        for c in checkpoints:
            if not isinstance(c, Checkpoint):
                raise TypeError(f"a state's checkpoints must be Checkpoint objects, got {type(c).__name__}")
        given = {c.tokens for c in checkpoints}
        kept = [c for c in self._slots.get(slot, []) if c.tokens not in given] + list(checkpoints)
        self._slots[slot] = kept[-self.per_slot:] if self.per_slot else []

    def reach(self, slot: int, ids, shared: int) -> int:
        """How many of ids' tokens a checkpoint of the slot lets a prompt skip (0: none)."""
        c = self.best(slot, ids, shared)
        return 0 if c is None else len(c.tokens)

    def load(self, slot: int, checkpoint: Checkpoint) -> int:
        """Puts the checkpoint's state into the slot; returns its position."""
        self.engine.state_load(checkpoint.state, len(checkpoint.tokens), slot)
        return len(checkpoint.tokens)

    def clear(self, slot: int | None = None) -> None:
        if slot is None:
            self._slots.clear()
        else:
            self._slots.pop(slot, None)


def resume(engine, checkpoints: StateCheckpoints | None, slot: int, ids, shared: int) -> int:
    """Where evaluation of ids resumes in `slot`, whose K/V rows hold `shared` tokens of it
    (prompt_cache.resume_point), or further on from a checkpoint, which is then loaded."""
    at = resume_point(engine, slot, shared)
    if checkpoints is not None:
        c = checkpoints.best(slot, ids, shared)
        if c is not None and len(c.tokens) > at:
            return checkpoints.load(slot, c)
    return at
