"""What CUDA shared memory saves a co-located client, on a lent GPU machine.

One ``inferd serve --allow-client-shm`` (cores 0-7) serves a pytorch model on the GPU
with a 602 KB FP32 image input ([3, 224, 224]) and a small output; tritonclient, the
way Triton users call it, sends the same requests three ways: the tensor in the gRPC
message, in system shared memory, and in CUDA shared memory (the input region filled
once, as a client whose data is already on the GPU; outputs written to a region of the
same kind). Each mode runs one request at a time (latency) and ``--concurrency``
clients on threads (throughput), in the same run, so compare the ratios.

Needs the dev extra (tritonclient) and cuda-python (tritonclient's CUDA helpers):

    python -m inferd.bench.gpu_cuda_shm --out DIR [--seconds 4] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferd.bench._harness import PinnedServer, cpu_seconds, markdown_table

MODEL = "image_head"
SHAPE = (1, 3, 224, 224)
OUTPUT_BYTES = 16 * 4
CONFIG = textwrap.dedent(
    f"""
    name: "{MODEL}"
    platform: "pytorch_libtorch"
    max_batch_size: 8
    input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
    output [ {{ name: "HEAD" data_type: TYPE_FP32 dims: [ 16 ] }} ]
    instance_group [ {{ kind: KIND_KIND count: 2 }} ]
    dynamic_batching {{ max_queue_delay_microseconds: 500 }}
    """
)
MODES = ("grpc", "system", "cuda")


def write_repository(root: Path, kind: str) -> Path:
    import torch

    class Head(torch.nn.Module):  # reads the whole image, so the input must be there
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return image.flatten(1).reshape(image.shape[0], 16, -1).sum(dim=2)

    version = root / MODEL / "1"
    version.mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG.replace("KIND_KIND", kind))
    torch.jit.script(Head().eval()).save(str(version / "model.pt"))
    return root


def expected_head(image: np.ndarray) -> np.ndarray:
    return image.reshape(image.shape[0], 16, -1).sum(axis=2, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


class Caller:
    """One client and its regions, sending requests in one mode."""

    def __init__(self, address: str, mode: str, image: np.ndarray) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(address)
        self.mode = mode
        self._cleanup: list[Callable[[], None]] = []
        self.inputs = [grpcclient.InferInput("IMAGE", list(SHAPE), "FP32")]
        self.outputs = [grpcclient.InferRequestedOutput("HEAD")]
        self._read: Callable[[], np.ndarray] | None = None
        suffix = uuid.uuid4().hex[:10]
        if mode == "grpc":
            self.inputs[0].set_data_from_numpy(image)
        elif mode == "system":
            self._system_regions(image, suffix)
        else:
            self._cuda_regions(image, suffix)

    def _system_regions(self, image: np.ndarray, suffix: str) -> None:
        import tritonclient.utils.shared_memory as shm

        regions = []
        for kind, size in (("in", image.nbytes), ("out", OUTPUT_BYTES)):
            name, key = f"{kind}_{suffix}", f"/bench_{kind}_{suffix}"
            handle = shm.create_shared_memory_region(name, key, size)
            self.client.register_system_shared_memory(name, key, size)
            self._cleanup.append(functools.partial(shm.destroy_shared_memory_region, handle))
            regions.append((name, handle))
        shm.set_shared_memory_region(regions[0][1], [image])
        self.inputs[0].set_shared_memory(regions[0][0], image.nbytes)
        self.outputs[0].set_shared_memory(regions[1][0], OUTPUT_BYTES)
        out = regions[1][1]

        def read() -> np.ndarray:
            return shm.get_contents_as_numpy(out, np.float32, [1, 16])

        self._read = read

    def _cuda_regions(self, image: np.ndarray, suffix: str) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        regions = []
        for kind, size in (("in", image.nbytes), ("out", OUTPUT_BYTES)):
            name = f"cuda_{kind}_{suffix}"
            handle = cudashm.create_shared_memory_region(name, size, 0)
            self.client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, size)
            self._cleanup.append(functools.partial(cudashm.destroy_shared_memory_region, handle))
            regions.append((name, handle))
        cudashm.set_shared_memory_region(regions[0][1], [image])
        self.inputs[0].set_shared_memory(regions[0][0], image.nbytes)
        self.outputs[0].set_shared_memory(regions[1][0], OUTPUT_BYTES)
        out = regions[1][1]

        def read() -> np.ndarray:
            return cudashm.get_contents_as_numpy(out, np.float32, [1, 16])

        self._read = read

    def call(self) -> None:
        self.client.infer(MODEL, self.inputs, outputs=self.outputs)

    def head(self) -> np.ndarray:
        """One request's answer, wherever this mode puts it."""
        result = self.client.infer(MODEL, self.inputs, outputs=self.outputs)
        return result.as_numpy("HEAD") if self._read is None else self._read()

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        self.client.unregister_cuda_shared_memory()
        for cleanup in self._cleanup:
            cleanup()
        self.client.close()


def measure(server: PinnedServer, callers: list[Caller], seconds: float, mode: str) -> Result:
    latencies: list[list[float]] = [[] for _ in callers]
    end = time.perf_counter() + seconds

    def loop(index: int) -> None:
        caller, own = callers[index], latencies[index]
        while time.perf_counter() < end:
            begin = time.perf_counter()
            caller.call()
            own.append((time.perf_counter() - begin) * 1000)

    threads = [threading.Thread(target=loop, args=(index,)) for index in range(len(callers))]
    started, cpu_before = time.perf_counter(), cpu_seconds(server.pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = np.array([latency for own in latencies for latency in own])
    p50, p99 = np.percentile(every, [50, 99])
    return Result(
        mode,
        len(callers),
        len(every),
        elapsed,
        float(p50),
        float(p99),
        (cpu_seconds(server.pid) - cpu_before) / elapsed,
    )


def render(results: list[Result], concurrency: int, modes: tuple[str, ...]) -> str:
    by_key = {(result.mode, result.concurrency): result for result in results}
    rows = []
    for mode in modes:
        single, loaded = by_key[(mode, 1)], by_key[(mode, concurrency)]
        base = by_key[("grpc", concurrency)]
        rows.append(
            [
                mode,
                f"{single.p50_ms:.2f}",
                f"{single.rate:,.0f}",
                f"{loaded.rate:,.0f}",
                f"{loaded.rate / base.rate:.2f}x",
                f"{loaded.p99_ms:.1f}",
                f"{loaded.server_cpu:.0%}",
            ]
        )
    return markdown_table(
        [
            "input in",
            "p50 ms (1 client)",
            "req/s (1 client)",
            f"req/s ({concurrency} clients)",
            "vs gRPC",
            f"p99 ms ({concurrency})",
            "server CPU",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--server-cores", default="0-7")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="check the bench itself without a GPU: the model on CPU, no CUDA mode",
    )
    args = parser.parse_args()
    modes = MODES[:2] if args.cpu else MODES
    args.out.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as directory:
        repository = write_repository(
            Path(directory) / "models", "KIND_CPU" if args.cpu else "KIND_GPU"
        )
        server = PinnedServer.inferd(repository, args.server_cores, "--allow-client-shm")
        try:
            for mode in modes:
                callers = [Caller(server.address, mode, image) for _ in range(args.concurrency)]
                try:
                    head = callers[0].head()  # the answer is right before it is timed
                    np.testing.assert_allclose(head, expected_head(image), rtol=1e-4, atol=0.05)
                    measure(server, callers[:1], 1.0, mode)  # warm up
                    for count in (1, args.concurrency):
                        result = measure(server, callers[:count], args.seconds, mode)
                        results.append(result)
                        print(f"{mode} x{count}: {result.rate:,.0f} req/s", flush=True)
                finally:
                    for caller in callers:
                        caller.close()
        finally:
            server.stop()
    table = render(results, args.concurrency, modes)
    print(table)
    document: dict[str, Any] = {
        "python": platform.python_version(),
        "results": [asdict(result) | {"rate": result.rate} for result in results],
    }
    (args.out / "cuda_shm.json").write_text(json.dumps(document, indent=2))
    (args.out / "cuda_shm.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
