"""A client built the way a user without inferd or tritonclient builds one: plain
``grpc_tools.protoc`` output from inferd's .proto files, talking to a running server.

The stubs are generated as-is (no post-processing), so they register their messages in
protobuf's default descriptor pool, as tritonclient's do. The client therefore runs in a
subprocess whose import path holds only those stubs: it cannot clash with, or quietly
borrow from, the tritonclient and inferd modules loaded in this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.server_process import ServerProcess

PROTOS = Path(__file__).resolve().parents[3] / "protos"
PROTO_FILES = ("grpc_service.proto", "model_config.proto")

CLIENT = r"""
import json
import sys

import grpc

import grpc_service_pb2 as pb
import grpc_service_pb2_grpc as pb_grpc
import model_config_pb2

address, stubs_dir = sys.argv[1], sys.argv[2]
assert pb.__file__.startswith(stubs_dir), pb.__file__
assert model_config_pb2.__file__.startswith(stubs_dir), model_config_pb2.__file__

result = {}
with grpc.insecure_channel(address) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    result["live"] = stub.ServerLive(pb.ServerLiveRequest(), timeout=60).live
    result["ready"] = stub.ServerReady(pb.ServerReadyRequest(), timeout=60).ready

    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"), timeout=60)
    result["metadata"] = {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
        "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs],
    }

    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple"), timeout=60).config
    assert isinstance(config, model_config_pb2.ModelConfig)
    result["config"] = {
        "name": config.name,
        "max_batch_size": config.max_batch_size,
        "inputs": [
            [t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)]
            for t in config.input
        ],
    }

    # Little-endian int32, row-major: [1, 16] tensors as raw bytes.
    input0 = list(range(16))
    input1 = [7] * 16
    request = pb.ModelInferRequest(model_name="simple", id="generated-stubs")
    for name, values in (("INPUT0", input0), ("INPUT1", input1)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(
            b"".join(v.to_bytes(4, "little", signed=True) for v in values)
        )
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT1")
    response = stub.ModelInfer(request, timeout=60)
    result["infer"] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [[t.name, t.datatype, list(t.shape)] for t in response.outputs],
        "values": [
            [int.from_bytes(raw[i : i + 4], "little", signed=True) for i in range(0, len(raw), 4)]
            for raw in response.raw_output_contents
        ],
    }

    try:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="no_such_model"), timeout=60)
    except grpc.RpcError as error:
        result["unknown_model"] = [error.code().name, error.details()]

result["foreign_modules"] = sorted(
    name for name in sys.modules if name.split(".")[0] in ("inferd", "tritonclient")
)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated-stubs")
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *PROTO_FILES,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    assert {p.name for p in out.iterdir()} >= {
        "grpc_service_pb2.py",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
    }
    return out


def _run_client(stubs: Path, address: str) -> dict:
    (stubs / "client.py").write_text(CLIENT)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(stubs)
    completed = subprocess.run(
        [sys.executable, str(stubs / "client.py"), address, str(stubs)],
        cwd=stubs,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_generated_stubs_talk_to_inferd(stubs: Path, demo_server: ServerProcess) -> None:
    result = _run_client(stubs, demo_server.address)

    assert result["foreign_modules"] == []
    assert result["live"] is True
    assert result["ready"] is True

    assert result["metadata"] == {
        "name": "simple",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [["INPUT0", "INT32", [-1, 16]], ["INPUT1", "INT32", [-1, 16]]],
        "outputs": [["OUTPUT0", "INT32", [-1, 16]], ["OUTPUT1", "INT32", [-1, 16]]],
    }
    assert result["config"] == {
        "name": "simple",
        "max_batch_size": 8,
        "inputs": [["INPUT0", "TYPE_INT32", [16]], ["INPUT1", "TYPE_INT32", [16]]],
    }

    infer = result["infer"]
    assert (infer["model_name"], infer["model_version"], infer["id"]) == (
        "simple",
        "1",
        "generated-stubs",
    )
    assert infer["outputs"] == [["OUTPUT0", "INT32", [1, 16]], ["OUTPUT1", "INT32", [1, 16]]]
    input0, input1 = np.arange(16), np.full(16, 7)
    assert infer["values"] == [(input0 + input1).tolist(), (input0 - input1).tolist()]

    code, message = result["unknown_model"]
    assert code == "NOT_FOUND"
    assert "no_such_model" in message
