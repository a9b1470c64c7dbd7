"""Packing requests into one execution and splitting the outputs back: pure numpy.

Requests merge only when their non-batch shapes match (the scheduler's signature), so
concatenating along dimension 0 is always well formed; each request gets back exactly
its own rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np


def gather(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One input per name, the requests' rows stacked in order."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([inputs[name] for inputs in requests]) for name in requests[0]}


def scatter(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split each output along dimension 0 by the requests' row counts: views, by slicing,
    which device tensors (torch) support as well as ndarrays."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output '{name}' has shape {list(array.shape)}: a batched model must return "
                f"{total} rows (one per input row) to be split among {len(rows)} requests"
            )
    ends = list(itertools.accumulate(rows))
    starts = [0, *ends[:-1]]
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in zip(starts, ends, strict=True)
    ]


def signature(inputs: Mapping[str, np.ndarray], batched: bool) -> tuple:
    """What must match for two requests to share an execution: each input's non-batch
    shape (variable dims included, so equal lengths only merge with equal lengths)."""
    if not batched:
        return ()
    return tuple(sorted((name, array.shape[1:]) for name, array in inputs.items()))
