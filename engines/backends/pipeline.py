"""Pipeline sharding: a model too big for one device, split into stages on several.

The model must run its top-level children in order (``torch.nn.Sequential``, scripted
or not): a stage is a contiguous run of children. Stages begin at the children named
in the config, or are balanced by parameter memory. A batch is cut into micro-batches;
each stage runs on its device's own CUDA stream, waits for the previous stage only
through a CUDA event, and receives activations with non-blocking copies, so while
stage 2 works on micro-batch 1, stage 1 already works on micro-batch 2. The host thread
only enqueues work; nothing here synchronizes a device.

On CPU (``cpu,cpu``) the same code runs the stages one after the other, which is how
the tests check that a sharded model answers exactly like the unsharded one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PipelineError(ValueError):
    """The model or the stage plan cannot be pipelined; the message says why."""


def sequential_children(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The children a pipeline may cut between, or PipelineError for a model whose
    forward is not known to run them in order."""
    kind = getattr(module, "original_name", type(module).__name__)  # scripted: original_name
    if not isinstance(module, torch.nn.Sequential) and kind != "Sequential":
        raise PipelineError(
            f"pipeline sharding needs a model that runs its top-level children in order "
            f"(torch.nn.Sequential); this model is a {kind}: have model.py's factory "
            "return an nn.Sequential of its stages"
        )
    return list(module.named_children())


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def balanced_starts(sizes: Sequence[int], stages: int) -> list[int]:
    """Where each stage begins (child indices, the first is 0), so that the heaviest
    stage holds as little parameter memory as possible; every stage gets a child.

    A binary search on the heaviest stage's size, each candidate checked by a greedy
    fill; a model has tens to hundreds of children, so this costs nothing at load.
    """
    if not 1 <= stages <= len(sizes):
        raise PipelineError(f"cannot cut {len(sizes)} children into {stages} stages")

    def starts_within(limit: int) -> list[int] | None:
        starts, load = [0], sizes[0]
        for index in range(1, len(sizes)):
            stages_to_open = stages - len(starts)
            # Cut when the child would overflow the stage, or when exactly as many
            # children are left as stages still to open.
            if stages_to_open and (
                load + sizes[index] > limit or len(sizes) - index == stages_to_open
            ):
                starts.append(index)
                load = sizes[index]
            else:
                load += sizes[index]
            if load > limit:
                return None
        return starts if len(starts) == stages else None

    low, high = max(sizes, default=0), sum(sizes)
    best = starts_within(high)
    while low < high:
        middle = (low + high) // 2
        found = starts_within(middle)
        if found is None:
            low = middle + 1
        else:
            best, high = found, middle
    if best is None:  # pragma: no cover - limit == sum(sizes) always fits
        raise PipelineError("no stage plan found")
    return best


def named_starts(names: Sequence[str], split_points: Sequence[str]) -> list[int]:
    """Stage starts from the children named as split points (each begins a new stage)."""
    starts = [0]
    for point in split_points:
        if point not in names:
            raise PipelineError(
                f"split point '{point}' is not a top-level child of the model (children: "
                f"{', '.join(names)})"
            )
        index = names.index(point)
        if index <= starts[-1]:
            raise PipelineError(
                f"split points must name children in model order, each after the last; "
                f"'{point}' does not"
            )
        starts.append(index)
    return starts


class Pipeline:
    """Stages on their devices, called like the model: one input tensor in, one out."""

    def __init__(
        self,
        children: Sequence[torch.nn.Module],
        starts: Sequence[int],
        devices: Sequence[torch.device],
        micro_batches: int,
    ) -> None:
        if len(starts) != len(devices):
            raise PipelineError(f"{len(starts)} stages for {len(devices)} devices")
        bounds = [*starts, len(children)]
        self.devices = list(devices)
        self.stages = [
            torch.nn.Sequential(*children[begin:end]).to(device)
            for begin, end, device in zip(bounds, bounds[1:], devices, strict=False)
        ]
        self.micro_batches = max(1, micro_batches)
        self._streams = [
            torch.cuda.Stream(device) if device.type == "cuda" else None for device in devices
        ]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        chunks = batch.chunk(min(self.micro_batches, max(1, batch.shape[0])))
        first = self._streams[0]
        if first is not None:
            # The input was staged on the caller's stream: the first stage starts after.
            first.wait_stream(torch.cuda.current_stream(self.devices[0]))
        outputs = [self._run_micro_batch(chunk) for chunk in chunks]
        last = self._streams[-1]
        if last is not None:
            torch.cuda.current_stream(self.devices[-1]).wait_stream(last)
            for output in outputs:
                output.record_stream(torch.cuda.current_stream(self.devices[-1]))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_micro_batch(self, activation: torch.Tensor) -> torch.Tensor:
        ready: torch.cuda.Event | None = None
        for stage, device, stream in zip(self.stages, self.devices, self._streams, strict=True):
            if stream is None:
                activation = stage(activation.to(device))
                continue
            with torch.cuda.stream(stream):
                if ready is not None:
                    stream.wait_event(ready)
                # The activation was made on the previous stage's stream: tell the caching
                # allocator this stream uses it too, so its memory is not reused early.
                activation.record_stream(stream)
                activation = stage(activation.to(device, non_blocking=True))
                ready = torch.cuda.Event()
                ready.record(stream)
        return activation
