"""A real Model behind a thin wrapper for the server tests: it records every stream it hands out
(text pieces produced, closed early or run out) and can hold a generation after its first piece
until the test releases it, or fail it there. What "streams as produced", "a disconnect stops
the generation" and "a held request outlasts the deadlines" become: assertions on counts and
events, not on timing."""
from __future__ import annotations

import threading


class InstrumentedModel:
    """Delegates to a real Model; records every stream it hands out."""

    def __init__(self, model):
        self._model = model
        self.streams: list[RecordedStream] = []
        self.hold_after_first_piece: threading.Event | None = None
        self.holding = threading.Event()        # set while a generation waits to be released
        self.fail_after_first_piece = False     # simulate an engine failure mid-generation

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, prompt, **sampling):
        recorded = RecordedStream(self._model.stream(prompt, **sampling), self.hold_after_first_piece,
                                  self.holding, self.fail_after_first_piece)
        self.streams.append(recorded)
        return recorded


class RecordedStream:
    def __init__(self, inner, hold: threading.Event | None, holding: threading.Event, fail: bool):
        self._inner = inner
        self._hold = hold
        self._holding = holding
        self._fail = fail
        self.pieces = 0
        self.closed_early = False
        self.exhausted = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.pieces == 1 and self._hold is not None:
            # The first piece is out; produce nothing more until the test says so.
            self._holding.set()
            assert self._hold.wait(120), "the test never released the held generation"
            self._holding.clear()
        if self.pieces == 1 and self._fail:
            raise RuntimeError("simulated engine failure")
        try:
            piece = next(self._inner)
        except StopIteration:
            self.exhausted = True
            raise
        self.pieces += 1
        return piece

    def close(self):
        self.closed_early = not self.exhausted
        self._inner.close()

    @property
    def completion(self):
        return self._inner.completion
