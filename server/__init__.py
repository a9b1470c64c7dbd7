"""The gRPC front end: servicers, codec, lifecycle and the ``inferd`` command."""

from inferd.server.app import InferenceServer, run
from inferd.server.config import ServerConfig

__all__ = ["InferenceServer", "ServerConfig", "run"]
