"""Which queued requests run together, and when: pure logic (no threads, clocks, asyncio
or protobuf), so every rule is tested with plain numbers."""
