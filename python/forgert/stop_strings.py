"""Stop strings over streamed text: hold text back while it could be the start of a stop string."""
from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops):
        self.stops = [s for s in (stops or []) if s]
        self.pending = ""
        self.stopped = False
        self.matched = None     # the stop string that ended the text (the first one in it)

    def feed(self, piece: str) -> str:
        """Add text; return what is now safe to emit. After a stop string is seen, `stopped` is
        True and the returned text ends just before it."""
        if self.stopped:
            return ""
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hits = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self.stopped = True
            out, self.pending = self.pending[:at], ""
            return out
        keep = self._longest_partial_suffix()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def _longest_partial_suffix(self) -> int:
        """Length of the longest suffix of pending that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At the end of generation the held-back text was not a stop string after all."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
