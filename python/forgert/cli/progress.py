"""Progress display on stderr for the CLI: a delayed spinner for slow steps and a counter bar."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

SPINNER_DELAY_S = 1.0   # steps faster than this show nothing: no flicker for quick loads
_FRAMES = "|/-\\"


@contextmanager
def spinner(label: str, stream=None):
    """Show `label` with a spinner and elapsed seconds once the block has taken a second.

    On a terminal the line is redrawn in place; elsewhere (pipes, logs) one line is printed when
    the slow step ends, so logs stay readable.
    """
    stream = stream or sys.stderr
    interactive = stream.isatty()
    done = threading.Event()
    start = time.perf_counter()
    shown = False

    def draw() -> None:
        nonlocal shown
        if done.wait(SPINNER_DELAY_S) or not interactive:
            return
        frame = 0
        while not done.is_set():
            shown = True
            stream.write(f"\r{label} {_FRAMES[frame % 4]} {time.perf_counter() - start:.1f}s")
            stream.flush()
            frame += 1
            done.wait(0.1)

    painter = threading.Thread(target=draw, daemon=True)
    painter.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        painter.join()
        elapsed = time.perf_counter() - start
        if elapsed >= SPINNER_DELAY_S or shown:
            status = "done" if ok else "failed"
            prefix, clear_rest = ("\r", "\x1b[K") if interactive else ("", "")
            stream.write(f"{prefix}{label} {status} in {elapsed:.1f}s{clear_rest}\n")
            stream.flush()


class ProgressBar:
    """`label [#####.....] 5/10 extra` redrawn in place on a terminal; elsewhere (pipes, logs)
    only the finished line is written."""

    def __init__(self, label: str, total: int, stream=None, width: int = 24):
        self.label, self.total, self.width = label, total, width
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()

    def update(self, done: int, extra: str = "") -> None:
        filled = int(self.width * done / max(self.total, 1))
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {extra}"
        if self.interactive:
            self.stream.write(f"\r{line}\x1b[K")
            if done >= self.total:
                self.stream.write("\n")
        elif done >= self.total:
            self.stream.write(line + "\n")
        self.stream.flush()


PREFILL_BAR_MIN_TOKENS = 1024   # shorter prompts evaluate in about a second or less: no bar


def prefill_bar(stream=None, min_tokens: int = PREFILL_BAR_MIN_TOKENS):
    """A Model.prefill_progress callback: a `prefill` bar on stderr for prompts that need at
    least min_tokens evaluated (a long prompt would otherwise give seconds of silence)."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if total < min_tokens:
            return
        if bar is None:
            bar = ProgressBar("prefill", total, stream)
        bar.update(done, "prompt tokens")
        if done >= total:
            bar = None    # the next prompt gets a bar of its own

    return update
