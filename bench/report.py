"""Where a benchmark's markdown report goes: stdout, and the --out file when one is given."""
from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path | None) -> None:
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
