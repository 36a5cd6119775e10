"""Reading a JSON-lines file (metrics.jsonl): by the trainer's readers and the plots, without torch."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics file; a line cut short by a killed run is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
