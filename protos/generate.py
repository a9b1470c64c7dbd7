"""Generate inferd's Python protobuf and gRPC modules from the .proto files.

Usage::

    python -m inferd.protos.generate [OUT_DIR]

With no argument the committed modules next to this file are regenerated.
``tests/protos/test_generate.py`` fails when they are out of date.

Code generation runs ``grpc_tools.protoc`` (grpcio-tools, pinned in the dev
dependencies; see ``GRPCIO_TOOLS_VERSION``) and then post-processes the
output in exactly two ways, described at ``_rewrite_imports`` and
``_use_private_pool``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import re
import sys
import tempfile
from pathlib import Path

# The generated code embeds the protoc / grpc versions it came from (and
# requires protobuf >= 6.31.1 at runtime), so the committed files are only
# reproducible with this exact grpcio-tools release. Keep it equal to the
# pin in pyproject.toml.
GRPCIO_TOOLS_VERSION = "1.76.0"

PROTO_DIR = Path(__file__).resolve().parent
# health.proto and reflection_*.proto are gRPC's own health and reflection
# services: inferd generates them itself so that they, too, live in its private
# pool and need neither grpcio-health-checking nor grpcio-reflection, whose
# gencode pins protobuf versions that tritonclient's may not match.
PROTO_FILES = (
    "model_config.proto",
    "grpc_service.proto",
    "health.proto",
    "reflection_v1alpha.proto",
    "reflection_v1.proto",
)
PACKAGE = "inferd.protos"

# Files kept from protoc's output. protoc's gRPC plugin also writes
# model_config_pb2_grpc.py, which holds only a grpcio version check because
# model_config.proto defines no service; it is not kept.
GENERATED_FILES = (
    "grpc_service_pb2.py",
    "grpc_service_pb2.pyi",
    "grpc_service_pb2_grpc.py",
    "health_pb2.py",
    "health_pb2.pyi",
    "health_pb2_grpc.py",
    "model_config_pb2.py",
    "model_config_pb2.pyi",
    "reflection_v1_pb2.py",
    "reflection_v1_pb2.pyi",
    "reflection_v1_pb2_grpc.py",
    "reflection_v1alpha_pb2.py",
    "reflection_v1alpha_pb2.pyi",
    "reflection_v1alpha_pb2_grpc.py",
)
_DISCARDED_FILES = frozenset({"model_config_pb2_grpc.py"})

# Modules generated from PROTO_FILES, e.g. "model_config_pb2".
_OUR_MODULES = tuple(Path(p).stem + "_pb2" for p in PROTO_FILES)
_OUR_MODULES_RE = "|".join(re.escape(m) for m in _OUR_MODULES)

_POOL_IMPORT = f"from {PACKAGE}._pool import POOL"
_IMPORT_ANCHOR = "from google.protobuf.internal import builder as _builder\n"
_DEFAULT_POOL = "_descriptor_pool.Default()"


def _rewrite_imports(text: str) -> str:
    """Post-processing 1: import sibling modules from ``inferd.protos``.

    protoc assumes the generated modules are top-level modules and writes
    ``import model_config_pb2 as model__config__pb2`` (``.py``, ``_grpc.py``)
    or ``import model_config_pb2 as _model_config_pb2`` (``.pyi``). That
    needs ``inferd/protos`` on ``sys.path`` and claims generic top-level
    names, so each such line becomes
    ``from inferd.protos import model_config_pb2 as model__config__pb2``.
    """
    text = re.sub(
        rf"^import ({_OUR_MODULES_RE}) as (\w+)$",
        rf"from {PACKAGE} import \1 as \2",
        text,
        flags=re.MULTILINE,
    )
    leftover = re.search(rf"^(?:import|from) (?:{_OUR_MODULES_RE})\b.*$", text, re.MULTILINE)
    if leftover:
        raise RuntimeError(f"unexpected import form in generated code: {leftover.group(0)!r}")
    return text


def _use_private_pool(text: str) -> str:
    """Post-processing 2: register the descriptors in inferd's private pool.

    protoc's code adds each file to ``_descriptor_pool.Default()``.
    tritonclient and KServe register files defining the same ``inference.*``
    symbols in that default pool, and a second file with the same symbols
    fails with "duplicate symbol 'inference.ServerLiveRequest'". Using
    ``inferd.protos._pool.POOL`` instead lets inferd and those packages be
    imported in one process, in either order (see ``_pool.py``).
    """
    if text.count(_DEFAULT_POOL) != 1 or text.count(_IMPORT_ANCHOR) != 1:
        raise RuntimeError("generated _pb2.py does not have the expected layout")
    text = text.replace(_DEFAULT_POOL, "POOL")
    return text.replace(_IMPORT_ANCHOR, f"{_IMPORT_ANCHOR}{_POOL_IMPORT}\n")


def _check_grpcio_tools_version() -> None:
    installed = importlib.metadata.version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION:
        raise RuntimeError(
            f"grpcio-tools {installed} is installed, but the committed code is "
            f"generated with grpcio-tools=={GRPCIO_TOOLS_VERSION} (the dev dependency pin)"
        )


def _run_protoc(out_dir: Path) -> None:
    from grpc_tools import protoc

    # grpc_tools ships the well-known .proto files (google/protobuf/*.proto).
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with importlib.resources.as_file(well_known) as include_dir:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include_dir}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ]
        status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit status {status}")


def generate(out_dir: Path) -> list[Path]:
    """Generate the modules into ``out_dir``; return the paths written."""
    _check_grpcio_tools_version()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp)
        _run_protoc(raw_dir)
        produced = {p.name for p in raw_dir.iterdir()}
        if produced != set(GENERATED_FILES) | _DISCARDED_FILES:
            raise RuntimeError(f"unexpected protoc output files: {sorted(produced)}")
        for name in GENERATED_FILES:
            text = (raw_dir / name).read_bytes().decode("utf-8")
            text = _rewrite_imports(text)
            if name.endswith("_pb2.py"):
                text = _use_private_pool(text)
            target = out_dir / name
            target.write_bytes(text.encode("utf-8"))
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferd.protos.generate",
        description="Regenerate inferd's protobuf/gRPC Python modules.",
    )
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=PROTO_DIR,
        help="output directory (default: the inferd.protos package directory)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
