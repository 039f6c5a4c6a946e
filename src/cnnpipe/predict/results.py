"""What `cnnpipe predict` writes: one row per file, as CSV, JSON or Parquet.

A row is the service's answer for the file (cnnpipe.serve.contract.Prediction: the label, null
when the model refuses it, the confidence, the top classes with their probabilities, the
distance to the nearest class, and the kind of refusal and its reason for a null label) with
the file's path, or the reason the file could not be read. CSV and Parquet flatten the top
classes into ranked columns class_1, probability_1, ...; JSON keeps the service's
`probabilities` object.
"""

from __future__ import annotations

import csv
import io
import json
import typing as t
from dataclasses import dataclass
from pathlib import Path

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path
from cnnpipe.serve.contract import Prediction

FORMATS = (".csv", ".json", ".parquet")


@dataclass(frozen=True)
class Row:
    path: Path
    prediction: Prediction | None  # None: the file could not be read
    error: str | None = None  # why it could not be read

    def record(self) -> dict[str, t.Any]:
        """As the JSON output has it."""
        p = self.prediction
        return {
            "path": str(self.path),
            "label": p.label if p else None,
            "confidence": p.confidence if p else None,
            "probabilities": p.probabilities if p else {},
            "distance": p.distance if p else None,
            "refusal": p.refusal if p else None,
            "reason": p.reason if p else None,
            "error": self.error,
        }

    def flat(self, k: int) -> dict[str, t.Any]:
        """As the CSV and Parquet outputs have it: the top k in ranked columns."""
        record = self.record()
        ranked = list(record.pop("probabilities").items())
        for i in range(k):
            name, probability = ranked[i] if i < len(ranked) else (None, None)
            record[f"class_{i + 1}"], record[f"probability_{i + 1}"] = name, probability
        return record


def check_format(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise CnnpipeError(
            f"--out {path}: unknown format {path.suffix or '(no suffix)'}; name a file ending "
            f"in {', '.join(FORMATS)}"
        )


def csv_text(rows: list[Row], k: int) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_columns(k)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.flat(k) for row in rows)
    return buffer.getvalue()


def _columns(k: int) -> dict[str, str]:
    """The flat columns and their Parquet types."""
    columns = {"path": "string", "label": "string", "confidence": "float64"}
    columns |= {"distance": "float64", "refusal": "string", "reason": "string", "error": "string"}
    for i in range(1, k + 1):
        columns |= {f"class_{i}": "string", f"probability_{i}": "float64"}
    return columns


def write(rows: list[Row], path: Path, k: int) -> None:
    """Write the rows to `path` in the format its suffix names, atomically."""
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            tmp.write_text(csv_text(rows, k))
        elif suffix == ".json":
            tmp.write_text(json.dumps([row.record() for row in rows], indent=1) + "\n")
        else:
            import pyarrow as pa  # for Parquet only
            import pyarrow.parquet as pq

            flat = [row.flat(k) for row in rows]
            schema = pa.schema([(name, kind) for name, kind in _columns(k).items()])
            pq.write_table(pa.Table.from_pylist(flat, schema=schema), tmp)
