"""What a Python model costs: an empty ``model.py`` (Triton's Python backend API, its
execute returning each input as the output) against the ONNX identity model, both
served by one inferd pinned to one core, the load pinned to another.

Reports latency at concurrency 1 and throughput at concurrency 64 for each, in
alternating rounds so drift on a shared machine hits both alike. Bounded: each window
stops after --seconds.

    python -m inferd.bench.python_backend --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from inferd.bench._harness import PinnedServer, add_pinning_arguments, closed_loop, markdown_table

EMPTY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""

# The same tensors and batching as the demo repository's identity_fp32.
EMPTY_CONFIG = textwrap.dedent(
    """
    name: "identity_python"
    backend: "python"
    max_batch_size: 64
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    """
)
MODELS = ("identity_fp32", "identity_python")


def build_repository(root: Path) -> Path:
    from inferd.engines.demo.repository import cached_demo_repository

    shutil.copytree(cached_demo_repository() / "identity_fp32", root / "identity_fp32")
    (root / "identity_python" / "1").mkdir(parents=True)
    (root / "identity_python" / "config.pbtxt").write_text(EMPTY_CONFIG)
    (root / "identity_python" / "1" / "model.py").write_text(EMPTY_MODEL)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    add_pinning_arguments(parser, rounds=True)
    args = parser.parse_args()

    os.sched_setaffinity(0, {args.client_core})
    inputs = {"INPUT0": np.random.default_rng(0).random((1, args.elements), dtype=np.float32)}
    p50_ms: dict[str, list[float]] = defaultdict(list)
    rates: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as directory:
        server = PinnedServer.inferd(build_repository(Path(directory)), args.server_core)
        try:
            for _ in range(args.rounds):
                for model in MODELS:
                    single = asyncio.run(
                        closed_loop(server.address, server.pid, model, inputs, 1, args.seconds,
                                    model)
                    )  # fmt: skip
                    loaded = asyncio.run(
                        closed_loop(server.address, server.pid, model, inputs, 64, args.seconds,
                                    model)
                    )  # fmt: skip
                    p50_ms[model].append(single.percentiles()[0])
                    rates[model].append(loaded.rate)
        finally:
            server.stop()
    rows = []
    for model in MODELS:
        rows.append(
            [
                model,
                " / ".join(f"{value:.3f}" for value in p50_ms[model]),
                " / ".join(f"{value:,.0f}" for value in rates[model]),
            ]
        )
    extra_us = [
        (python - onnx) * 1000
        for python, onnx in zip(p50_ms["identity_python"], p50_ms["identity_fp32"], strict=True)
    ]
    ratio = [
        python / onnx
        for python, onnx in zip(rates["identity_python"], rates["identity_fp32"], strict=True)
    ]
    print(markdown_table(["model", "p50 ms at concurrency 1", "req/s at concurrency 64"], rows))
    print(
        "\nPython model vs ONNX identity, per round: added p50 "
        + " / ".join(f"{value:+.0f} us" for value in extra_us)
        + "; throughput ratio "
        + " / ".join(f"{value:.2f}" for value in ratio)
    )


if __name__ == "__main__":
    main()
