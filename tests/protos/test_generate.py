"""Tests for inferd's protocol definitions and their generated Python code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2, text_format

from inferd.protos import generate as protos_generate
from inferd.protos import (
    grpc_service_pb2,
    health_pb2,
    model_config_pb2,
    reflection_v1_pb2,
    reflection_v1alpha_pb2,
)

SERVICE = "inference.GRPCInferenceService"


def test_generated_code_is_up_to_date(tmp_path):
    written = protos_generate.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(protos_generate.GENERATED_FILES)
    stale = []
    for name in protos_generate.GENERATED_FILES:
        committed = protos_generate.PROTO_DIR / name
        if not committed.is_file() or committed.read_bytes() != (tmp_path / name).read_bytes():
            stale.append(name)
    assert not stale, (
        f"generated protobuf code is out of date: {', '.join(stale)}; "
        "run `python -m inferd.protos.generate` and commit the result"
    )


# --- wire compatibility with tritonclient's generated modules -------------------------


def _file_proto(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _walk_messages(
    prefix: str, messages: Iterator[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        full_name = f"{prefix}.{message.name}"
        yield full_name, message
        yield from _walk_messages(full_name, iter(message.nested_type))


def _messages(proto: descriptor_pb2.FileDescriptorProto) -> dict:
    return dict(_walk_messages(proto.package, iter(proto.message_type)))


def _enums(proto: descriptor_pb2.FileDescriptorProto) -> dict:
    enums = {f"{proto.package}.{e.name}": e for e in proto.enum_type}
    for full_name, message in _messages(proto).items():
        enums.update({f"{full_name}.{e.name}": e for e in message.enum_type})
    return enums


def _field_signature(message: descriptor_pb2.DescriptorProto, field) -> tuple:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (
        field.name,
        field.number,
        field.label,
        field.type,
        field.type_name,
        oneof,
        field.proto3_optional,
    )


@pytest.mark.parametrize(
    ("triton_module", "ours_module"),
    [
        ("tritonclient.grpc.model_config_pb2", model_config_pb2),
        ("tritonclient.grpc.service_pb2", grpc_service_pb2),
    ],
    ids=["model_config", "grpc_service"],
)
def test_messages_and_enums_match_tritonclient(triton_module, ours_module):
    # tritonclient's copy may predate the newest Triton protos: inferd may have
    # extra messages, fields and enum values, but everything tritonclient has must
    # exist in inferd with the same number, name and type.
    theirs = _file_proto(importlib.import_module(triton_module))
    ours = _file_proto(ours_module)
    assert ours.package == theirs.package == "inference"
    assert ours.syntax == theirs.syntax == "proto3"

    our_messages = _messages(ours)
    for full_name, message in _messages(theirs).items():
        assert full_name in our_messages, f"message {full_name} is missing"
        our_message = our_messages[full_name]
        assert our_message.options.map_entry == message.options.map_entry, full_name
        our_fields = {f.number: f for f in our_message.field}
        for field in message.field:
            assert field.number in our_fields, f"{full_name}.{field.name} is missing"
            assert _field_signature(our_message, our_fields[field.number]) == _field_signature(
                message, field
            ), f"{full_name} field {field.number} differs"

    our_enums = _enums(ours)
    for full_name, enum in _enums(theirs).items():
        assert full_name in our_enums, f"enum {full_name} is missing"
        our_values = {v.name: v.number for v in our_enums[full_name].value}
        for value in enum.value:
            assert our_values.get(value.name) == value.number, f"{full_name}.{value.name} differs"


def _service(module: ModuleType) -> descriptor_pb2.ServiceDescriptorProto:
    proto = _file_proto(module)
    (service,) = [s for s in proto.service if f"{proto.package}.{s.name}" == SERVICE]
    return service


def test_service_matches_tritonclient():
    from tritonclient.grpc import service_pb2 as triton_service_pb2

    theirs, ours = _service(triton_service_pb2), _service(grpc_service_pb2)
    our_methods = {m.name: m for m in ours.method}
    for method in theirs.method:
        assert method.name in our_methods, f"rpc {method.name} is missing"
        our_method = our_methods[method.name]
        for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
            assert getattr(our_method, attr) == getattr(method, attr), f"{method.name}.{attr}"
    assert len(ours.method) == 20


def test_messages_round_trip_with_tritonclient():
    from tritonclient.grpc import service_pb2 as triton_service_pb2

    request = triton_service_pb2.ModelInferRequest(model_name="m", model_version="1", id="x")
    request.parameters["sequence_id"].int64_param = 7
    tensor = request.inputs.add(name="IN", datatype="FP32", shape=[1, 2])
    tensor.parameters["binary"].bool_param = True
    request.outputs.add(name="OUT")
    request.raw_input_contents.append(b"\x00" * 8)
    wire = request.SerializeToString(deterministic=True)

    ours = grpc_service_pb2.ModelInferRequest.FromString(wire)
    assert ours.inputs[0].shape == [1, 2]
    assert ours.parameters["sequence_id"].int64_param == 7
    assert ours.SerializeToString(deterministic=True) == wire


# --- gRPC's health and reflection services ----------------------------------------------


def _definitions(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    """What a file defines and how it is encoded: without its name and language options."""
    proto = _file_proto(module)
    proto.ClearField("name")
    proto.ClearField("options")
    return proto


@pytest.mark.parametrize(
    ("grpc_module", "ours_module"),
    [
        ("grpc_health.v1.health_pb2", health_pb2),
        ("grpc_reflection.v1alpha.reflection_pb2", reflection_v1alpha_pb2),
    ],
    ids=["health", "reflection_v1alpha"],
)
def test_health_and_reflection_match_grpc(grpc_module, ours_module):
    # grpcio-health-checking and grpcio-reflection (dev dependencies only) carry gRPC's
    # own definitions: inferd's must define the same package, messages, fields, numbers,
    # enums and services, field for field.
    theirs = _definitions(importlib.import_module(grpc_module))
    assert text_format.MessageToString(_definitions(ours_module)) == text_format.MessageToString(
        theirs
    )


def test_reflection_v1_is_v1alpha_in_another_package():
    v1alpha = text_format.MessageToString(_definitions(reflection_v1alpha_pb2))
    v1 = text_format.MessageToString(_definitions(reflection_v1_pb2))
    assert v1alpha.count("grpc.reflection.v1alpha") == 10  # the package and 9 type names
    assert v1 == v1alpha.replace("grpc.reflection.v1alpha", "grpc.reflection.v1")


# --- coexistence with tritonclient in one process ---------------------------------------

_IMPORT_OURS = "import inferd.protos.grpc_service_pb2, inferd.protos.grpc_service_pb2_grpc"
_IMPORT_TRITON = "import tritonclient.grpc"
_IMPORT_GRPC = "import grpc_health.v1.health_pb2, grpc_reflection.v1alpha.reflection_pb2"


@pytest.mark.parametrize(
    "statements",
    [(_IMPORT_OURS, _IMPORT_TRITON), (_IMPORT_TRITON, _IMPORT_OURS)],
    ids=["inferd-first", "tritonclient-first"],
)
def test_imports_beside_tritonclient(statements):
    # A fresh interpreter, so the import order is real (this process has already
    # imported both); -W error also turns any import-time warning into a failure.
    code = "\n".join(
        [
            *statements,
            "from inferd.protos import grpc_service_pb2 as ours",
            "from tritonclient.grpc import service_pb2 as theirs",
            "assert ours.DESCRIPTOR.pool is not theirs.DESCRIPTOR.pool",
            "wire = theirs.ServerLiveResponse(live=True).SerializeToString()",
            "assert ours.ServerLiveResponse.FromString(wire).live",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "statements",
    [
        ("import inferd.server.grpc.health, inferd.server.grpc.reflection", _IMPORT_GRPC),
        (_IMPORT_GRPC, "import inferd.server.grpc.health, inferd.server.grpc.reflection"),
    ],
    ids=["inferd-first", "grpc-first"],
)
def test_health_and_reflection_stubs_beside_grpcs(statements):
    # The same grpc.health.v1 / grpc.reflection.v1alpha symbols, once in inferd's pool
    # and once in the default pool; and inferd itself imports neither of gRPC's packages.
    check_inferd_alone = (
        "import sys; import inferd.server.grpc.health, inferd.server.grpc.reflection; "
        "assert not {'grpc_health.v1', 'grpc_reflection.v1alpha'} & set(sys.modules)"
    )
    code = "\n".join(
        [
            *statements,
            "from inferd.protos import health_pb2 as ours",
            "from grpc_health.v1 import health_pb2 as theirs",
            "assert ours.DESCRIPTOR.pool is not theirs.DESCRIPTOR.pool",
            "wire = theirs.HealthCheckResponse(status=theirs.HealthCheckResponse.SERVING)",
            "assert ours.HealthCheckResponse.FromString(wire.SerializeToString()).status == 1",
        ]
    )
    for program in (check_inferd_alone, code):
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", program],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
