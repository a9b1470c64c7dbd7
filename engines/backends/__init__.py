"""Runtimes behind the `Backend` interface, registered by name and imported on first use.

Importing a runtime (onnxruntime, tensorrt, torch) is slow and some are GPU-only
extras, so the registry holds module paths, not classes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from inferd.engines.backends.base import (
    Backend,
    BackendInstance,
    BackendRequest,
    InstanceSpec,
    RequestInstance,
    ResponseSender,
)
from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2

__all__ = [
    "Backend",
    "BackendInstance",
    "BackendRequest",
    "InstanceSpec",
    "RequestInstance",
    "ResponseSender",
    "get_backend",
    "resolve_backend",
]

_BACKEND_CLASSES: dict[str, str] = {
    "onnxruntime": "inferd.engines.backends.onnxruntime:OnnxRuntimeBackend",
    # Triton's name for its PyTorch backend is "pytorch"; "torch" is accepted too.
    "pytorch": "inferd.engines.backends.pytorch:TorchBackend",
    "torch": "inferd.engines.backends.pytorch:TorchBackend",
    # Triton's Python backend: <model>/<version>/model.py with a TritonPythonModel class.
    "python": "inferd.engines.backends.python:PythonBackend",
}
_EXTRA_BY_BACKEND: dict[str, str] = {"pytorch": "torch"}
_BACKEND_BY_PLATFORM: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
}
_BACKEND_BY_MODEL_FILE: dict[str, str] = {
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.pt2": "pytorch",
    "model.py": "python",  # Triton's choice too; a PyTorch model.py names its backend
}


def get_backend(name: str) -> Backend:
    try:
        target = _BACKEND_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(_BACKEND_CLASSES))
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT, f"unknown backend '{name}' (inferd has: {known})"
        ) from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(
            ErrorCode.UNSUPPORTED,
            f"backend '{name}' needs a package that is not installed ({exc.name}): "
            f"pip install 'inferd[{_EXTRA_BY_BACKEND.get(name, name)}]'",
        ) from None
    backend_class = getattr(module, class_name)
    backend: Backend = backend_class()
    return backend


def resolve_backend(config: model_config_pb2.ModelConfig, version_dir: Path | None) -> Backend:
    """The backend a model asks for: `backend`, else `platform`, else its model file's name."""
    if config.backend:
        return get_backend(config.backend)
    if config.platform:
        if config.platform not in _BACKEND_BY_PLATFORM:
            known = ", ".join(sorted(_BACKEND_BY_PLATFORM))
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"unknown platform '{config.platform}' for model '{config.name}' "
                f"(inferd serves: {known})",
            )
        return get_backend(_BACKEND_BY_PLATFORM[config.platform])
    if version_dir is not None:
        for filename, backend in _BACKEND_BY_MODEL_FILE.items():
            if (version_dir / filename).exists():
                return get_backend(backend)
    raise EngineError(
        ErrorCode.INVALID_ARGUMENT,
        f"cannot tell the backend of model '{config.name}': set `backend` or `platform` in "
        f"its config.pbtxt, or name the model file one of {sorted(_BACKEND_BY_MODEL_FILE)}",
    )
