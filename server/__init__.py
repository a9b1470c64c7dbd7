"""The server: front doors (server/grpc), the request path, the engine host, the process
layout (server/ipc), configuration and the ``inferd`` command.

``InferenceServer`` and ``run`` load the engine and gRPC: imported on first use, so that
``inferd models`` or ``inferd --help`` (whose dispatcher lives here) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferd.server.config import ServerConfig

if TYPE_CHECKING:
    from inferd.server.app import InferenceServer, run

__all__ = ["InferenceServer", "ServerConfig", "run"]


def __getattr__(name: str) -> Any:
    if name in ("InferenceServer", "run"):
        from inferd.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'inferd.server' has no attribute {name!r}")
