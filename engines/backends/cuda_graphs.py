"""CUDA graphs for batched models: one graph per batch-size bucket, captured at load.

Replaying a graph launches a whole forward pass with one call, which is what frees a
Python server from kernel-launch overhead at small batches (ResNet-50 on an H200:
3.23 ms eager at batch 1, 0.85 ms replayed). A graph has fixed shapes, so a batch of
``rows`` runs in the smallest captured bucket that holds it: its rows are copied into
the bucket's static input buffers, the rows above are zeroed (padding), and the outputs
are trimmed back to ``rows``. Batches larger than every bucket, or whose non-batch
shapes differ from the captured ones, run eagerly.

Memory is bounded by the buckets: each instance holds one set of static buffers per
bucket, sharing one graph memory pool, however much traffic arrives.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Forward = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]

# Warm-up runs before capture: cuDNN/cuBLAS pick algorithms and allocate workspaces on
# their first calls, which must not happen inside a capture.
_WARMUP_RUNS = 2


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself.

    Padding to the next power of two wastes at most half a batch of compute, and the
    number of graphs (memory) grows with log2(max_batch_size).
    """
    if max_batch_size < 1:
        return ()
    buckets = {max_batch_size}
    size = 1
    while size < max_batch_size:
        buckets.add(size)
        size *= 2
    return tuple(sorted(buckets))


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``rows`` (ascending ``buckets``); None if none does."""
    position = bisect.bisect_left(buckets, rows)
    return buckets[position] if position < len(buckets) else None


def fill_padded(static: torch.Tensor, rows: torch.Tensor) -> None:
    """Copy ``rows`` into the first rows of ``static`` and zero the rest (the padding).

    Zeros rather than whatever the last batch left: padding never carries another
    request's data, and never NaNs or infinities that a batch-wide op could spread.
    """
    count = rows.shape[0]
    static[:count].copy_(rows, non_blocking=True)
    if count < static.shape[0]:
        static[count:].zero_()


def trim(outputs: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """The first ``rows`` rows of each padded output."""
    return [output[:rows] for output in outputs]


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class CudaGraphSet:
    """The graphs of one execution instance, captured on its stream.

    ``row_shapes`` and ``dtypes`` describe each input without its batch dimension, as
    the model receives it (after the dtype cast).
    """

    def __init__(
        self,
        forward: Forward,
        row_shapes: Sequence[tuple[int, ...]],
        dtypes: Sequence[torch.dtype],
        buckets: Sequence[int],
        device: torch.device,
        stream: torch.cuda.Stream,
    ) -> None:
        self.buckets = tuple(sorted(buckets))
        self._row_shapes = [tuple(shape) for shape in row_shapes]
        self._graphs: dict[int, _Captured] = {}
        pool = torch.cuda.graph_pool_handle()
        # Largest first: smaller graphs then fit in the memory the largest one pooled.
        for bucket in reversed(self.buckets):
            inputs = [
                torch.zeros((bucket, *shape), dtype=dtype, device=device)
                for shape, dtype in zip(self._row_shapes, dtypes, strict=True)
            ]
            stream.wait_stream(torch.cuda.current_stream(device))  # the zeros are written
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP_RUNS):
                    forward(inputs)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: other instances may be running kernels (and allocating) on
            # other threads while this one captures.
            with torch.cuda.graph(
                graph, pool=pool, stream=stream, capture_error_mode="thread_local"
            ):
                outputs = forward(inputs)
            self._graphs[bucket] = _Captured(graph, inputs, outputs)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """Replay the bucket that fits, on the current stream; None when none fits."""
        rows = inputs[0].shape[0]
        if any(tuple(tensor.shape[1:]) != shape for tensor, shape in zip(
            inputs, self._row_shapes, strict=True
        )):  # fmt: skip
            return None
        bucket = bucket_for(rows, self.buckets)
        if bucket is None:
            return None
        captured = self._graphs[bucket]
        for static, tensor in zip(captured.inputs, inputs, strict=True):
            fill_padded(static, tensor)
        captured.graph.replay()
        return trim(captured.outputs, rows)
