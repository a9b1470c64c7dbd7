"""The engine: model repository, execution instances and backends. No gRPC here."""

from inferd.engines.catalog import CatalogEntry, ModelCatalog, ModelInfo
from inferd.engines.client import EngineClient, InProcessEngineClient
from inferd.engines.engine import Engine
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.types import (
    BatchMember,
    BatchObserver,
    BatchRecord,
    ErrorResponse,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelIndexEntry,
    ModelState,
    OutputTensor,
    RequestedOutput,
)
from inferd.engines.validation import TensorSpec

__all__ = [
    "BatchMember",
    "BatchObserver",
    "BatchRecord",
    "CatalogEntry",
    "Engine",
    "EngineClient",
    "EngineError",
    "ErrorCode",
    "ErrorResponse",
    "InProcessEngineClient",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ModelCatalog",
    "ModelIndexEntry",
    "ModelInfo",
    "ModelState",
    "OutputTensor",
    "RequestedOutput",
    "TensorSpec",
]
