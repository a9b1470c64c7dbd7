"""RepositoryModelLoad / RepositoryModelUnload requests: their parameters' wire types
checked with Triton's messages, then handed to model control as typed requests."""

from __future__ import annotations

from inferd.engines import EngineError, ErrorCode
from inferd.protos import grpc_service_pb2 as pb
from inferd.server.model_control import FILE_PREFIX, LoadRequest, load_request, shown, upload_path

_NOT_SUPPORTED = "'repository_name' specification is not supported"


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def decode_load_request(request: pb.RepositoryModelLoadRequest) -> LoadRequest:
    """Triton's parameter rules and wording, then inferd's limits on uploaded files."""
    if request.repository_name:
        raise EngineError(ErrorCode.UNSUPPORTED, _NOT_SUPPORTED)
    config_text: str | None = None
    files: dict[str, bytes] = {}
    for key, value in request.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise _invalid(
                    f"invalid value type for load parameter '{key}', expected string_param."
                )
            config_text = value.string_param
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise _invalid(
                    f"invalid value type for load parameter '{shown(key)}', expected bytes_param."
                )
            files[upload_path(key)] = value.bytes_param
        else:
            raise _invalid(f"unrecognized load parameter '{shown(key)}'.")
    return load_request(request.model_name, config_text, files)


def decode_unload_request(request: pb.RepositoryModelUnloadRequest) -> str:
    """The model to unload, once the request's parameters are checked."""
    if request.repository_name:
        raise EngineError(ErrorCode.UNSUPPORTED, _NOT_SUPPORTED)
    dependents = request.parameters.get("unload_dependents")
    if dependents is not None and dependents.WhichOneof("parameter_choice") != "bool_param":
        raise _invalid("invalid value type for 'unload_dependents' parameter, expected bool_param.")
    return request.model_name
