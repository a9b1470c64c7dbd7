"""Reading and checking a model's ``config.pbtxt`` (Triton's ModelConfig, protobuf text format).

The config message itself is Triton's ``ModelConfig`` protobuf: it is the schema users
already write, so the engine keeps it as its configuration type rather than mirroring
a hundred messages in dataclasses. Wire types (``grpc_service.proto``) never reach here.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2

CONFIG_FILENAME = "config.pbtxt"


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse ``<model_dir>/config.pbtxt``; an absent file gives an empty config to complete."""
    path = model_dir / CONFIG_FILENAME
    config = model_config_pb2.ModelConfig()
    if not path.exists():
        config.name = model_dir.name
        return config
    text = path.read_text(encoding="utf-8")
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise EngineError(ErrorCode.INVALID_ARGUMENT, f"failed to parse {path}: {exc}") from None
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model name '{config.name}' in {path} does not match its directory "
            f"name '{model_dir.name}'",
        )
    return config


def validate_config(config: model_config_pb2.ModelConfig) -> None:
    """Reject configs the engine cannot serve, naming the model and the offending field."""
    model = config.name
    if config.max_batch_size < 0:
        raise _bad(model, f"max_batch_size must be >= 0, got {config.max_batch_size}")
    if not config.input:
        raise _bad(model, "the config declares no inputs")
    if not config.output:
        raise _bad(model, "the config declares no outputs")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            if not tensor.name:
                raise _bad(model, f"an {kind} has no name")
            if tensor.name in seen:
                raise _bad(model, f"{kind} '{tensor.name}' is declared twice")
            seen.add(tensor.name)
            if tensor.data_type == model_config_pb2.TYPE_INVALID:
                raise _bad(model, f"{kind} '{tensor.name}' has no data_type")
            for dim in tensor.dims:
                if dim < 1 and dim != -1:
                    raise _bad(
                        model,
                        f"{kind} '{tensor.name}': dimension must be integer >= 1, or -1 to "
                        f"indicate a variable-size dimension, got {list(tensor.dims)}",
                    )
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 1:
        raise _bad(model, "version_policy latest.num_versions must be >= 1")


def version_directories(model_dir: Path) -> list[int]:
    """Numeric subdirectories, ascending: Triton ignores anything else in a model directory."""
    versions = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit():
            versions.append(int(child.name))
    return sorted(versions)


def select_versions(config: model_config_pb2.ModelConfig, available: list[int]) -> list[int]:
    """The versions the version policy asks for, ascending (default: the latest one)."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        missing = sorted(wanted - set(available))
        if missing:
            raise _bad(
                config.name,
                f"version_policy asks for version(s) {missing} but the model directory "
                f"holds {available}",
            )
        return sorted(wanted)
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-count:]


def _bad(model: str, detail: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, f"invalid config for model '{model}': {detail}")
