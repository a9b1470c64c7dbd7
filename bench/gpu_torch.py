"""The pytorch backend on a GPU: engine efficiency against the model's own ceiling, then
end to end over loopback gRPC. Made to run once on a lent GPU machine inside one call
(``bench/gpu_check.sh`` installs, runs the GPU tests, then this).

1. Engine: ResNet-50 and BERT-base (random weights, fp16) served in-process through the
   engine-client interface (no gRPC) with many concurrent batch-1 requests, CUDA graphs
   off and on, 1, 2 and 4 instances. Against it, the ceiling: the same module called
   directly with device-resident inputs at the batch sizes the scheduler formed (eager,
   or replayed from a graph captured at exactly that size), timed with CUDA events.
2. End to end: ``inferd serve`` (pinned to half the cores) and ``inferd bench`` with
   several load processes (the other half) at rising concurrency: throughput, p50/p99,
   the server's CPU (its main thread runs the event loop) and GPU utilisation.

    python -m inferd.bench.gpu_torch --out DIR            # on the GPU machine
    python -m inferd.bench.gpu_torch --out DIR --smoke    # tiny models on CPU, to check it runs

Results go to DIR/gpu_torch.json and DIR/gpu_torch.md, section by section, so a run cut
short still leaves what it finished.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inferd.bench._harness import PinnedServer, cpu_seconds, markdown_table
from inferd.engines.execution.executor import GPU_GIL_SWITCH_INTERVAL_S

RESNET_SOURCE = """
import torch
import torchvision


class ResNet50(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torchvision.models.resnet50().to(memory_format=torch.channels_last)

    def forward(self, images):
        return self.net(images.contiguous(memory_format=torch.channels_last))


def create_model():
    return ResNet50()
"""

BERT_SOURCE = """
import torch
import transformers

VOCAB = 30522


class BertEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bert = transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB))

    def forward(self, input_ids):
        # An id outside the vocabulary would trip a device-side assert, which ends the
        # CUDA context of the whole process: clamp instead.
        embedded = self.bert.embeddings(input_ids=input_ids.clamp(0, VOCAB - 1))
        # No attention mask (every token counts): BertModel's own forward builds one and
        # asks the host whether it is all ones (a sync per batch), and while a CUDA graph
        # is captured it keeps the mask, which leaves flash attention for a slower kernel.
        # Same answer, measured equal to BertModel(...).pooler_output.
        return self.bert.pooler(self.bert.encoder(embedded)[0])


def create_model():
    return BertEncoder()
"""

TINY_IMAGE_SOURCE = """
import torch


def create_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(192, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
"""

TINY_TEXT_SOURCE = """
import torch


class MeanEmbedding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(30522, 16)

    def forward(self, input_ids):
        return self.embedding(input_ids).mean(dim=1)


def create_model():
    return MeanEmbedding()
"""


@dataclass(frozen=True)
class BenchModel:
    name: str
    source: str
    input_name: str
    input_type: str  # config data type
    row_shape: tuple[int, ...]
    output_name: str
    output_dims: tuple[int, ...]
    max_batch_size: int

    def row(self, rng: np.random.Generator) -> np.ndarray:
        if self.input_type == "TYPE_INT64":
            return rng.integers(0, 30522, size=(1, *self.row_shape), dtype=np.int64)
        return rng.standard_normal((1, *self.row_shape), dtype=np.float32)


GPU_MODELS = (
    BenchModel("resnet50", RESNET_SOURCE, "images", "TYPE_FP32", (3, 224, 224), "logits",
               (1000,), 64),
    BenchModel("bert_base", BERT_SOURCE, "input_ids", "TYPE_INT64", (128,), "pooled",
               (768,), 64),
)  # fmt: skip
SMOKE_MODELS = (
    BenchModel("tiny_image", TINY_IMAGE_SOURCE, "images", "TYPE_FP32", (3, 8, 8),
               "logits", (10,), 8),
    BenchModel("tiny_text", TINY_TEXT_SOURCE, "input_ids", "TYPE_INT64", (16,),
               "pooled", (16,), 8),
)  # fmt: skip


def write_model(repository: Path, model: BenchModel, instances: int, graphs: bool, gpu: bool):
    model_dir = repository / model.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(model.source)
    dims = ", ".join(map(str, model.row_shape))
    out_dims = ", ".join(map(str, model.output_dims))
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    dtype = "fp16" if gpu else "fp32"
    config = textwrap.dedent(
        f"""
        name: "{model.name}"
        backend: "pytorch"
        default_model_filename: "model.py"
        max_batch_size: {model.max_batch_size}
        dynamic_batching {{ }}
        input [ {{ name: "{model.input_name}" data_type: {model.input_type} dims: [ {dims} ] }} ]
        output [ {{ name: "{model.output_name}" data_type: TYPE_FP32 dims: [ {out_dims} ] }} ]
        instance_group [ {{ kind: {kind} count: {instances} }} ]
        parameters {{ key: "dtype" value: {{ string_value: "{dtype}" }} }}
        """
    )
    if graphs:
        config += "optimization { cuda { graphs: true } }\n"
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


# --- 1. engine efficiency ---------------------------------------------------------


@dataclass
class EngineResult:
    model: str
    graphs: bool
    instances: int
    concurrency: int
    requests: int
    seconds: float
    throughput: float  # requests (= rows) per second through the engine
    batch_sizes: dict[int, int]  # executions per batch size
    mean_batch: float
    queue_ms: float  # mean per request
    gather_ms: float  # means per execution: requests stacked into the staging buffers
    infer_ms: float  # upload, compute, download, wait for the batch's event
    scatter_ms: float  # outputs split and handed back to the event loop
    ceiling: float = 0.0  # rows/s of the module alone at the same batch sizes
    ceiling_coverage: float = 0.0  # share of rows whose batch size was timed
    efficiency: float = 0.0


async def _drive_engine(client, model: BenchModel, concurrency: int, seconds: float, warmup: float):
    from inferd.engines.types import InferRequest, InputTensor

    datatype = model.input_type.removeprefix("TYPE_")
    payload = model.row(np.random.default_rng(0)).tobytes()
    shape = (1, *model.row_shape)
    completed = 0
    measuring = False
    deadline = time.perf_counter() + warmup + seconds

    async def worker() -> None:
        nonlocal completed
        while time.perf_counter() < deadline:
            request = InferRequest(
                model.name, None, [InputTensor(model.input_name, datatype, shape, payload)]
            )
            await client.infer(request)
            if measuring:
                completed += 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring, started = True, time.perf_counter()
    (before,) = await client.statistics(model.name, None)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    (after,) = await client.statistics(model.name, None)
    return completed, elapsed, _phases(before, after)


def _phases(before, after) -> dict:
    """What the statistics say happened between two snapshots."""
    counted = {stats.batch_size: stats for stats in before.batch_stats}

    def delta(stats, phase: str) -> tuple[int, int]:
        old = getattr(counted[stats.batch_size], phase) if stats.batch_size in counted else None
        new = getattr(stats, phase)
        return new.count - (old.count if old else 0), new.ns - (old.ns if old else 0)

    batches, phase_ns = {}, {"compute_input": 0, "compute_infer": 0, "compute_output": 0}
    for stats in after.batch_stats:
        count, _ = delta(stats, "compute_infer")
        if count:
            batches[stats.batch_size] = count
        for phase in phase_ns:
            phase_ns[phase] += delta(stats, phase)[1]
    executions = max(sum(batches.values()), 1)
    queued = max(after.queue.count - before.queue.count, 1)
    return {
        "batches": batches,
        "queue_ms": (after.queue.ns - before.queue.ns) / queued / 1e6,
        "gather_ms": phase_ns["compute_input"] / executions / 1e6,
        "infer_ms": phase_ns["compute_infer"] / executions / 1e6,
        "scatter_ms": phase_ns["compute_output"] / executions / 1e6,
    }


def engine_run(
    model: BenchModel, instances: int, graphs: bool, gpu: bool, concurrency: int, seconds: float
) -> EngineResult:
    import uvloop

    from inferd.engines.client import InProcessEngineClient

    with tempfile.TemporaryDirectory() as directory:
        write_model(Path(directory), model, instances, graphs, gpu)
        client = InProcessEngineClient(Path(directory))

        async def run():
            await client.start()
            entries = await client.repository_index(ready_only=False)
            if any(entry.state.value != "READY" for entry in entries):
                raise RuntimeError(f"model did not load: {entries}")
            try:
                return await _drive_engine(client, model, concurrency, seconds, warmup=2.0)
            finally:
                await client.close()

        completed, elapsed, phases = uvloop.run(run())
    batches = phases["batches"]
    rows = sum(size * count for size, count in batches.items())
    return EngineResult(
        model.name, graphs, instances, concurrency, completed, elapsed, completed / elapsed,
        batches, rows / max(sum(batches.values()), 1), phases["queue_ms"], phases["gather_ms"],
        phases["infer_ms"], phases["scatter_ms"],
    )  # fmt: skip


def direct_ceiling(model: BenchModel, graphs: bool, gpu: bool, batches: dict[int, int]):
    """Rows/s of the module alone at the batch sizes formed; the sizes timed carry at least
    90% of the rows (at most 8 sizes), and the share they carry is returned too."""
    import torch

    from inferd.engines.backends.cuda_graphs import CudaGraphSet
    from inferd.engines.backends.torch_modules import load_module

    device = torch.device("cuda:0" if gpu else "cpu")
    dtype = torch.float16 if gpu else torch.float32
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "1" / "model.py"
        path.parent.mkdir()
        path.write_text(model.source)
        module = load_module(path, f"{model.name}_direct", "create_model", device).to(dtype)
    rows_by_size = sorted(batches.items(), key=lambda item: -item[0] * item[1])
    total_rows = sum(size * count for size, count in rows_by_size)
    timed: dict[int, float] = {}
    covered = 0
    stream = torch.cuda.Stream(device) if gpu else None
    with torch.inference_mode():
        for size, count in rows_by_size[:8]:
            if covered >= 0.9 * total_rows:
                break
            batch = torch.from_numpy(
                np.concatenate([model.row(np.random.default_rng(i)) for i in range(size)])
            ).to(device)
            if batch.dtype.is_floating_point:
                batch = batch.to(dtype)
            forward: Callable[[], object]
            if graphs and stream is not None:
                graph_set = CudaGraphSet(
                    lambda tensors: [module(*tensors)], [model.row_shape], [batch.dtype],
                    [size], device, stream,
                )  # fmt: skip
                forward = functools.partial(graph_set.run, [batch])
            else:
                forward = functools.partial(module, batch)
            timed[size] = _time_call(forward, gpu, stream)
            covered += size * count
    seconds = sum(count * timed[size] for size, count in batches.items() if size in timed)
    rows = sum(size * count for size, count in batches.items() if size in timed)
    return rows / seconds, covered / max(total_rows, 1)


def _time_call(forward: Callable[[], object], gpu: bool, stream) -> float:
    """Seconds per call: enough calls for about 0.2 s, the best of three such runs (the
    GPU's clocks and a shared host drift; the best run is the module's own speed)."""
    import torch

    def run(calls: int) -> float:
        if not gpu:
            started = time.perf_counter()
            for _ in range(calls):
                forward()
            return (time.perf_counter() - started) / calls
        with torch.cuda.stream(stream):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            for _ in range(calls):
                forward()
            end.record(stream)
        end.synchronize()
        return begin.elapsed_time(end) / 1000 / calls

    run(3)  # warm up
    calls = max(5, int(0.2 / max(run(5), 1e-6)))
    return min(run(calls) for _ in range(3))


# --- 2. end to end over gRPC -------------------------------------------------------


@dataclass
class EndToEndResult:
    model: str
    concurrency: int
    workers: int
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_cores: float  # the whole server process
    event_loop_cpu: float  # its main thread (event loop, decoding), fraction of a core
    gpu_utilisation: float | None  # nvidia-smi's mean over the level, percent
    load_cpu: float  # the load processes together, in cores
    errors: dict[str, int] = field(default_factory=dict)


def _thread_cpu_seconds(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuSampler:
    """nvidia-smi's utilisation, sampled every 200 ms while a level runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True,
                ).stdout  # fmt: skip
                self.samples.append(float(out.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def end_to_end(
    models: tuple[BenchModel, ...], gpu: bool, levels: list[int], workers: int,
    window_ms: int, out: Path, server_cores: str, load_cores: str,
) -> list[EndToEndResult]:  # fmt: skip
    results: list[EndToEndResult] = []
    repository = Path(tempfile.mkdtemp(prefix="inferd-e2e-"))
    for model in models:
        write_model(repository, model, instances=2, graphs=gpu, gpu=gpu)
        if model.input_type == "TYPE_INT64":  # token ids inside the vocabulary
            np.save(repository / f"{model.name}.npy", model.row(np.random.default_rng(1))[0])
    server = PinnedServer.inferd(repository, server_cores)
    try:
        for model in models:
            for concurrency in levels:
                report = out / f"e2e_{model.name}_{concurrency}.json"
                command = [
                    "taskset", "-c", load_cores, sys.executable, "-m", "inferd.server", "bench",
                    "-m", model.name, "-u", server.address,
                    "--concurrency-range", str(concurrency), "--workers", str(workers),
                    "-p", str(window_ms), "-r", "3", "--warmup", "1000", "--json", str(report),
                ]  # fmt: skip
                data = repository / f"{model.name}.npy"
                if data.exists():
                    command += ["--input-data", str(data)]
                cpu_before = cpu_seconds(server.pid)
                loop_before = _thread_cpu_seconds(server.pid, server.pid)
                started = time.perf_counter()
                with GpuSampler() as sampler:
                    subprocess.run(command, check=True, timeout=120, capture_output=True)
                elapsed = time.perf_counter() - started
                level = json.loads(report.read_text())["results"][0]
                report.unlink()
                results.append(
                    EndToEndResult(
                        model.name,
                        concurrency,
                        workers,
                        level["throughput"],
                        level["latency"]["p50_us"] / 1000,
                        level["latency"]["p99_us"] / 1000,
                        (cpu_seconds(server.pid) - cpu_before) / elapsed,
                        (_thread_cpu_seconds(server.pid, server.pid) - loop_before) / elapsed,
                        sampler.mean(),
                        level["client_cpu"],
                        level["errors"],
                    )
                )
                print(f"e2e {results[-1]}", flush=True)
    finally:
        server.stop()
    return results


# --- the run -----------------------------------------------------------------------


def environment() -> dict[str, object]:
    import grpc
    import torch
    from google import protobuf

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for package in ("torchvision", "transformers"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def render(document: dict) -> str:
    lines = [f"# pytorch backend on {document['environment'].get('gpu') or 'CPU (smoke)'}", ""]
    lines.append("```\n" + json.dumps(document["environment"]) + "\n```\n")
    engine = document.get("engine", [])
    if engine:
        lines.append("## Engine (in-process, no gRPC), batch-1 requests\n")
        lines.append(
            markdown_table(
                [
                    "model",
                    "graphs",
                    "instances",
                    "req/s",
                    "mean batch",
                    "ceiling rows/s",
                    "efficiency",
                    "ceiling covers",
                    "queue ms",
                    "gather / infer / scatter ms per batch",
                ],
                [
                    [
                        r["model"],
                        "on" if r["graphs"] else "off",
                        str(r["instances"]),
                        f"{r['throughput']:,.0f}",
                        f"{r['mean_batch']:.1f}",
                        f"{r['ceiling']:,.0f}",
                        f"{r['efficiency']:.0%}",
                        f"{r['ceiling_coverage']:.0%}",
                        f"{r['queue_ms']:.1f}",
                        f"{r['gather_ms']:.2f} / {r['infer_ms']:.2f} / {r['scatter_ms']:.2f}",
                    ]
                    for r in engine
                ],
            )
        )
    e2e = document.get("end_to_end", [])
    if e2e:
        lines.append("\n## End to end over loopback gRPC\n")
        lines.append(
            markdown_table(
                [
                    "model",
                    "concurrency",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU (cores)",
                    "event loop thread",
                    "GPU util %",
                    "load CPU (cores)",
                    "errors",
                ],
                [
                    [
                        r["model"],
                        str(r["concurrency"]),
                        f"{r['throughput']:,.0f}",
                        f"{r['p50_ms']:.2f}",
                        f"{r['p99_ms']:.2f}",
                        f"{r['server_cpu_cores']:.2f}",
                        f"{r['event_loop_cpu']:.0%}",
                        "-" if r["gpu_utilisation"] is None else f"{r['gpu_utilisation']:.0f}",
                        f"{r['load_cpu']:.2f}",
                        str(sum(r["errors"].values())),
                    ]
                    for r in e2e
                ],
            )
        )
    for failure in document.get("failures", []):
        lines.append(f"\n! {failure}")
    return "\n".join(lines) + "\n"


def _graph_modes(choice: str, gpu: bool) -> list[bool]:
    if not gpu:
        return [False]
    return {"both": [False, True], "on": [True], "off": [False]}[choice]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU")
    parser.add_argument("--seconds", type=float, default=5.0, help="engine window per config")
    parser.add_argument("--concurrency", type=int, default=512, help="engine: outstanding")
    parser.add_argument("--instances", default="1,2,4")
    parser.add_argument("--levels", default="16,64,256", help="end to end: concurrency")
    parser.add_argument("--workers", type=int, default=4, help="end to end: load processes")
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--skip", default="", help="comma list: engine, e2e")
    parser.add_argument("--graphs", choices=["both", "on", "off"], default="both")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=GPU_GIL_SWITCH_INTERVAL_S,
        help="GIL switch interval, seconds (default: what inferd serve sets for GPU models)",
    )
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval)

    gpu = not args.smoke
    models = SMOKE_MODELS if args.smoke else GPU_MODELS
    cpus = os.cpu_count() or 2
    server_cores, load_cores = f"0-{cpus // 2 - 1}", f"{cpus // 2}-{cpus - 1}"
    args.out.mkdir(parents=True, exist_ok=True)
    document: dict = {"environment": environment(), "engine": [], "end_to_end": [], "failures": []}
    document["environment"]["pinning"] = f"server cores {server_cores}, load cores {load_cores}"

    def save() -> None:
        (args.out / "gpu_torch.json").write_text(json.dumps(document, indent=2) + "\n")
        (args.out / "gpu_torch.md").write_text(render(document))

    save()
    skip = set(args.skip.split(","))
    if "engine" not in skip:
        for model in models:
            for graphs in _graph_modes(args.graphs, gpu):
                for instances in map(int, args.instances.split(",")):
                    label = f"engine {model.name} graphs={graphs} instances={instances}"
                    try:
                        result = engine_run(
                            model, instances, graphs, gpu, args.concurrency, args.seconds
                        )
                        result.ceiling, result.ceiling_coverage = direct_ceiling(
                            model, graphs, gpu, result.batch_sizes
                        )
                        result.efficiency = result.throughput / result.ceiling
                        document["engine"].append(asdict(result))
                        print(label, asdict(result), flush=True)
                    except Exception:
                        document["failures"].append(f"{label}: {traceback.format_exc()}")
                        print(document["failures"][-1], flush=True)
                    save()
    if "e2e" not in skip:
        try:
            document["end_to_end"] = [
                asdict(result)
                for result in end_to_end(
                    models,
                    gpu,
                    [int(level) for level in args.levels.split(",")],
                    args.workers,
                    args.window_ms,
                    args.out,
                    server_cores,
                    load_cores,
                )
            ]
        except Exception:
            document["failures"].append(f"end to end: {traceback.format_exc()}")
            print(document["failures"][-1], flush=True)
        save()
    print(render(document))


if __name__ == "__main__":
    main()
