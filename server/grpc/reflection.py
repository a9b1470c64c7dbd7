"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``) over inferd's pool.

inferd's descriptors live in a private pool (see ``inferd.protos._pool``) so that inferd
and tritonclient load side by side, and so do its own health and reflection stubs:
grpcio-reflection's servicer is tied to its stubs in protobuf's default pool, and its
gencode demands protobuf releases that tritonclient's pins can rule out. This servicer
answers from ``POOL``.

Both API versions are served: newer grpcurl and gRPC clients ask v1 first and fall back
to v1alpha. Their messages have the same fields, so one servicer class, given a version's
generated module, serves either. Each request on the stream gets its answer before the
next is read; nothing accumulates. What has no answer (an unknown file, symbol or
extension; a request that asks nothing) gets an ``error_response`` with the status code
gRPC's reference servicer uses, and the stream goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from inferd.protos import (
    grpc_service_pb2,
    health_pb2,
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)
from inferd.protos._pool import POOL


def _service_name(module: ModuleType, name: str) -> str:
    return module.DESCRIPTOR.services_by_name[name].full_name


INFERENCE_SERVICE = _service_name(grpc_service_pb2, "GRPCInferenceService")
HEALTH_SERVICE = _service_name(health_pb2, "Health")
REFLECTION_V1_SERVICE = _service_name(reflection_v1_pb2, "ServerReflection")
REFLECTION_V1ALPHA_SERVICE = _service_name(reflection_v1alpha_pb2, "ServerReflection")

# The generated messages of either version; protoc gives them no common static type.
_Request = Any
_Response = Any


class _NoAnswer(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ReflectionServicer:
    """``ServerReflection`` of one API version, for the given services, from ``pool``."""

    def __init__(
        self, pb2: ModuleType, services: Sequence[str], pool: descriptor_pool.DescriptorPool
    ) -> None:
        self._pb2 = pb2
        self._services = tuple(sorted(services))
        self._pool = pool

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[_Request], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Response]:
        async for request in request_iterator:
            yield self._respond(request)

    def _respond(self, request: _Request) -> _Response:
        pb2 = self._pb2
        try:
            answer = self._answer(request)
        except _NoAnswer as missing:
            code = missing.code.value[0]
            error = pb2.ErrorResponse(error_code=code, error_message=missing.message)
            return pb2.ServerReflectionResponse(original_request=request, error_response=error)
        return pb2.ServerReflectionResponse(original_request=request, **answer)

    def _answer(self, request: _Request) -> dict[str, Any]:
        pb2 = self._pb2
        question = request.WhichOneof("message_request")
        if question == "list_services":
            services = [pb2.ServiceResponse(name=name) for name in self._services]
            return {"list_services_response": pb2.ListServiceResponse(service=services)}
        if question == "file_by_filename":
            return self._files(self._file_by_name(request.file_by_filename))
        if question == "file_containing_symbol":
            return self._files(self._file_containing(request.file_containing_symbol))
        if question == "file_containing_extension":
            wanted = request.file_containing_extension
            message = self._message(wanted.containing_type)
            try:
                extension = self._pool.FindExtensionByNumber(message, wanted.extension_number)
            except KeyError:
                raise _NoAnswer(
                    grpc.StatusCode.NOT_FOUND,
                    f"no extension {wanted.extension_number} of '{wanted.containing_type}'",
                ) from None
            return self._files(self._file_containing(extension.full_name))
        if question == "all_extension_numbers_of_type":
            message = self._message(request.all_extension_numbers_of_type)
            numbers = sorted(e.number for e in self._pool.FindAllExtensions(message))
            response = pb2.ExtensionNumberResponse(
                base_type_name=message.full_name, extension_number=numbers
            )
            return {"all_extension_numbers_response": response}
        raise _NoAnswer(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request asks nothing: set one of file_by_filename, file_containing_symbol, "
            "file_containing_extension, all_extension_numbers_of_type, list_services",
        )

    def _files(self, file: descriptor.FileDescriptor) -> dict[str, Any]:
        """``file`` first, then every file it imports, directly or not, each once."""
        ordered: dict[str, descriptor.FileDescriptor] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in ordered:
                ordered[current.name] = current
                pending.extend(reversed(current.dependencies))
        serialized = []
        for each in ordered.values():
            proto = descriptor_pb2.FileDescriptorProto()
            each.CopyToProto(proto)
            serialized.append(proto.SerializeToString())
        response = self._pb2.FileDescriptorResponse(file_descriptor_proto=serialized)
        return {"file_descriptor_response": response}

    def _file_by_name(self, name: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            raise _NoAnswer(grpc.StatusCode.NOT_FOUND, f"no file '{name}'") from None

    def _file_containing(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        # protobuf's upb pool finds services, messages, fields and enums, not methods,
        # and clients ask for a method's file ("describe <service>.<method>").
        service_name, _, method = symbol.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name) if service_name else None
        except KeyError:
            service = None
        if service is None or method not in service.methods_by_name:
            raise _NoAnswer(grpc.StatusCode.NOT_FOUND, f"no symbol '{symbol}'")
        return service.file

    def _message(self, name: str) -> descriptor.Descriptor:
        try:
            return self._pool.FindMessageTypeByName(name)
        except KeyError:
            raise _NoAnswer(grpc.StatusCode.NOT_FOUND, f"no message type '{name}'") from None


def reflection_servicers() -> list[tuple[ReflectionServicer, Callable[[Any, Any], None]]]:
    """Reflection, v1 and v1alpha, for the inference, health and reflection services:
    each servicer with the function that adds it to a server."""
    services = (
        INFERENCE_SERVICE,
        HEALTH_SERVICE,
        REFLECTION_V1_SERVICE,
        REFLECTION_V1ALPHA_SERVICE,
    )
    return [
        (
            ReflectionServicer(reflection_v1_pb2, services, POOL),
            reflection_v1_pb2_grpc.add_ServerReflectionServicer_to_server,
        ),
        (
            ReflectionServicer(reflection_v1alpha_pb2, services, POOL),
            reflection_v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server,
        ),
    ]


# The two versions' services have the same methods; either describes both for bridging.
REFLECTION_SERVICE_DESCRIPTOR = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
