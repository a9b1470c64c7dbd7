"""Dynamic batching on vs off, against onnxruntime in-process at the batch sizes formed.

Puts one model into two repositories that differ only in ``dynamic_batching``, serves
each in turn pinned to one core (one execution instance, so the model and the gRPC
front share that core as they would on a small node), and drives it from this process,
pinned to the other core, with 1..64 clients each keeping one batch-1 request
outstanding. ModelStatistics deltas give the batch sizes the scheduler formed;
onnxruntime is then timed in-process at that batch size in the same run, so each claim
is a ratio. Bounded: every measurement stops after --seconds.

Models: ``cnn`` is the demo repository's cnn_classifier (convolutions: about as fast per
image at batch 1 as at 64 on a CPU); ``mlp`` is a wide MLP built here (1024-4096-4096-10,
21M parameters: batch 1 reads 84 MB of weights for one row, so batching pays).

    python -m inferd.bench.batching --model mlp --concurrency 1 8 32 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import grpc
import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from inferd.bench._harness import (
    Measurement,
    PinnedServer,
    add_pinning_arguments,
    closed_loop,
    in_process,
    markdown_table,
    percent,
)
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from inferd.protos import model_config_pb2

MODEL = "model"  # both benchmark models are served under this name
MLP_WIDTHS = (1024, 4096, 4096, 10)


def _mlp(path: Path) -> None:
    """Gemm+Relu layers ending in Softmax; weights from a fixed seed."""
    rng = np.random.RandomState(7)
    nodes, weights, tensor = [], [], "INPUT"
    layers = list(itertools.pairwise(MLP_WIDTHS))
    for index, (fan_in, fan_out) in enumerate(layers):
        scale = np.sqrt(2 / fan_in)
        weights.append(
            numpy_helper.from_array(
                (rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32), f"W{index}"
            )
        )
        weights.append(numpy_helper.from_array(np.zeros(fan_out, np.float32), f"B{index}"))
        nodes.append(helper.make_node("Gemm", [tensor, f"W{index}", f"B{index}"], [f"h{index}"]))
        tensor = f"h{index}"
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [tensor], [f"r{index}"]))
            tensor = f"r{index}"
    nodes.append(helper.make_node("Softmax", [tensor], ["OUTPUT"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", MLP_WIDTHS[0]])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", MLP_WIDTHS[-1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _sample(model: str) -> np.ndarray:
    shape = (1, 3, 32, 32) if model == "cnn" else (1, MLP_WIDTHS[0])
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _repository(model: str, destination: Path, queue_delay_us: int | None) -> Path:
    """The model with one CPU instance and max_batch_size 64, with or without batching."""
    version_dir = destination / MODEL / "1"
    version_dir.mkdir(parents=True)
    if model == "cnn":
        from inferd.engines.demo.repository import cached_demo_repository

        shutil.copy(cached_demo_repository() / "cnn_classifier" / "1" / "model.onnx", version_dir)
    else:
        _mlp(version_dir / "model.onnx")
    # Inputs and outputs are spelled out: left to auto-complete, a batchable model gets
    # `dynamic_batching {}` (as in Triton) and the unbatched run would batch too.
    config = model_config_pb2.ModelConfig(name=MODEL, max_batch_size=64)
    config.input.add(
        name="INPUT", data_type=model_config_pb2.TYPE_FP32, dims=_sample(model).shape[1:]
    )
    config.output.add(name="OUTPUT", data_type=model_config_pb2.TYPE_FP32, dims=[10])
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    if queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    (destination / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))
    return destination


def _executions(address: str) -> tuple[int, int]:
    """(inference_count, execution_count) of the model so far."""
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=MODEL)
        )
    stats = response.model_stats[0]
    return stats.inference_count, stats.execution_count


def _sweep(
    repository: Path,
    inputs: dict[str, np.ndarray],
    concurrencies: list[int],
    seconds: float,
    core: int,
    label: str,
) -> list[tuple[Measurement, float]]:
    """Per concurrency: the measurement and the mean batch size the server executed."""
    server = PinnedServer.inferd(repository, core)
    results = []
    try:
        for concurrency in concurrencies:
            before = _executions(server.address)
            measurement = asyncio.run(
                closed_loop(
                    server.address, server.pid, MODEL, inputs, concurrency, seconds,
                    f"{label}, {concurrency} clients",
                )
            )  # fmt: skip
            after = _executions(server.address)
            rows, executions = after[0] - before[0], after[1] - before[1]
            results.append((measurement, rows / max(executions, 1)))
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "mlp"], default="mlp")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    add_pinning_arguments(parser, rounds=False)
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=0,
        help="dynamic_batching max_queue_delay_microseconds for the batched run (%(default)s)",
    )  # fmt: skip
    args = parser.parse_args()

    os.sched_setaffinity(0, {args.client_core})
    sample = _sample(args.model)
    inputs = {"INPUT": sample}
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as scratch:
        batched_repo = _repository(args.model, Path(scratch) / "on", args.max_queue_delay_us)
        unbatched_repo = _repository(args.model, Path(scratch) / "off", None)
        sweep = (inputs, args.concurrency, args.seconds, args.server_core)
        unbatched = _sweep(unbatched_repo, *sweep, "unbatched")
        batched = _sweep(batched_repo, *sweep, "batched")
        model_file = batched_repo / MODEL / "1" / "model.onnx"
        rows = []
        for (off, _), (on, mean_batch) in zip(unbatched, batched, strict=True):
            batch = max(1, round(mean_batch))
            rows_in = {"INPUT": np.repeat(sample, batch, axis=0)}
            reference = in_process(model_file, rows_in, args.seconds, f"batch {batch}")
            rows.append(_row(off, on, mean_batch, reference))
    print(
        f"model {args.model}, one CPU instance, server on core {args.server_core}, load on "
        f"core {args.client_core}, batch-1 requests, {args.seconds:.0f} s per row, "
        f"max_queue_delay_microseconds {args.max_queue_delay_us}"
    )
    header = [
        "clients", "unbatched req/s", "p50 / p99 ms", "batched req/s", "p50 / p99 ms",
        "mean batch", "in-process rows/s at that batch", "batched / in-process",
        "batched / unbatched", "server CPU", "load CPU",
    ]  # fmt: skip
    print(markdown_table(header, rows))


def _row(off: Measurement, on: Measurement, mean_batch: float, reference: Measurement) -> list[str]:
    off_p50, off_p99 = off.percentiles()
    on_p50, on_p99 = on.percentiles()
    return [
        on.label.split(", ")[1], f"{off.rate:,.0f}", f"{off_p50:.1f} / {off_p99:.1f}",
        f"{on.rate:,.0f}", f"{on_p50:.1f} / {on_p99:.1f}", f"{mean_batch:.1f}",
        f"{reference.rate:,.0f}", f"{on.rate / reference.rate:.2f}",
        f"{on.rate / off.rate:.2f}", percent(on.server_cpu), percent(on.client_cpu),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
