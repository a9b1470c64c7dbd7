"""bench/gpu_cuda_shm.py runs where it can here (its --cpu mode: the model on CPU, no
CUDA mode), so the script a GPU session runs in one call has not rotted. No timing is
asserted: only that each mode answered correctly and was reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_bench_runs_its_cpu_modes(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "inferd.bench.gpu_cuda_shm",
            "--out",
            str(tmp_path),
            "--cpu",
            "--seconds",
            "0.3",
            "--concurrency",
            "2",
            "--server-cores",
            "0-1",
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    results = json.loads((tmp_path / "cuda_shm.json").read_text())["results"]
    assert {(result["mode"], result["concurrency"]) for result in results} == {
        ("grpc", 1),
        ("grpc", 2),
        ("system", 1),
        ("system", 2),
    }
    assert all(result["requests"] > 0 for result in results)
    table = (tmp_path / "cuda_shm.md").read_text()
    assert "| grpc |" in table and "| system |" in table
