"""Triton's classification extension: an output asked for with ``classification: k``
comes back as its top-k entries, as BYTES strings ``"<value>:<index>[:<label>]"``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line, as in Triton's ``label_filename``."""
    return tuple(path.read_text(encoding="utf-8").splitlines())


def _format(value: np.generic) -> str:
    # Triton formats with std::to_string: six decimals for floats, plain integers.
    return f"{value:f}" if isinstance(value, np.floating) else str(value)


def top_k(data: np.ndarray, k: int, labels: tuple[str, ...], batched: bool) -> np.ndarray:
    """Each batch row's (or, unbatched, the whole tensor's) k largest entries, largest first."""
    rows = data.reshape(data.shape[0], -1) if batched else data.reshape(1, -1)
    count = min(k, rows.shape[1])
    result = np.empty((rows.shape[0], count), dtype=np.object_)
    for row_index, row in enumerate(rows):
        # stable sort of the negated values: ties keep the lower index first
        order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        for rank, index in enumerate(order):
            text = f"{_format(row[index])}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            result[row_index, rank] = text.encode("utf-8")
    return result if batched else result[0]
