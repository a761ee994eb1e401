"""Append-only JSON-lines metrics log (one object per line, flushed on every write)."""

from __future__ import annotations

import json
import math
from pathlib import Path


class JSONLLogger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean, sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (resume from an older checkpoint)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines()
                 if line and json.loads(line).get("step", -1) <= step]
        from vilearn.io import write_text

        write_text(self.path, "".join(line + "\n" for line in lines))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
