"""metrics.jsonl: one JSON object per line, appended as training goes.

On resume the log is cut back to the checkpoint's step, so the file always reads as one continuous run
(a line half-written when the process was killed is dropped too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmforge.core.atomic import atomic_write_text


def read_metrics(path: Path) -> list[dict]:
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True, keep_through_step: int | None = None):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        if keep_through_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_through_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, **record) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
