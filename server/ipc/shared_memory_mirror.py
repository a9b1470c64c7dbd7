"""Client system shared memory in a front process: the engine process holds the
registrations; each front keeps a mirror of them, with its own descriptors, to read
inputs and write outputs where its requests are decoded and encoded.

Registering, unregistering and status go to the engine, which checks them (names,
keys, sizes, limits) and then sends every front the new list before it answers, so the
front that asked is up to date when the client hears back. Another front may get the
list a moment later: a request naming a region its front does not know yet makes that
front fetch the list first. A region still in use by a request on a front stays open
there until that request is done, as in one process.
"""

from __future__ import annotations

import logging

from inferd.engines import EngineError
from inferd.engines.client_memory.system import RegionStatus, SystemSharedMemoryRegistry
from inferd.server.ipc import messages as m
from inferd.server.ipc.remote_client import RemoteEngineClient

logger = logging.getLogger("inferd.front")


class MirroredSharedMemoryRegistry(SystemSharedMemoryRegistry):
    def __init__(self, engine: RemoteEngineClient, enabled: bool, max_request_bytes: int) -> None:
        super().__init__(enabled=enabled, max_request_bytes=max_request_bytes)
        self._engine = engine
        self._cuda_names: frozenset[str] = frozenset()
        engine.on_regions = self.mirror

    async def register_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self._engine.call(
            lambda call: m.RegisterRegionCall(call, name, key, offset, byte_size)
        )

    async def region_status(self, name: str) -> list[RegionStatus]:
        reply = await self._engine.call(lambda call: m.RegionStatusCall(call, name))
        return reply.regions or []

    async def unregister_region(self, name: str) -> None:
        await self._engine.call(lambda call: m.UnregisterRegionCall(call, name))

    async def prepare(self, names: set[str]) -> None:
        if self.enabled and not names <= self.names() | self._cuda_names:
            cuda = await self._engine.cuda_region_status("")
            self.mirror(await self.region_status(""), [region.name for region in cuda])

    def mirror(self, regions: list[RegionStatus], cuda_names: list[str]) -> None:
        """Make this front's regions the engine's ``regions``; remember which names are
        CUDA regions, whose tensors go to the engine unread."""
        self._cuda_names = frozenset(cuda_names)
        wanted = {region.name: region for region in regions}
        for held in self.status(""):
            if wanted.get(held.name) != held:
                self.unregister(held.name)
        held_names = self.names()
        for region in regions:
            if region.name in held_names:
                continue
            try:
                self.register(region.name, region.key, region.offset, region.byte_size)
            except EngineError as exc:  # the object changed since the engine checked it
                logger.warning(
                    "cannot mirror shared memory region '%s': %s", region.name, exc.message
                )
