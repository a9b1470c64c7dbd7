"""A bare Python v2 gRPC server that echoes each request's inputs as its outputs.

No model, no validation, no queue: the ceiling for a Python gRPC server, so the gap to
it is inferd's own overhead. Three flavors: grpc.aio on asyncio's loop, grpc.aio on
uvloop, and the synchronous ``grpc.server`` with a thread pool. ``--reuse-port`` lets
several of them share one port (the kernel spreads connections between them).

    python -m inferd.bench.peers.echo_servicer --flavor sync --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures

import grpc

from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc

FLAVORS = ("aio", "uvloop", "sync")


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def _echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


class _SyncEcho(pb_grpc.GRPCInferenceServiceServicer):
    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        return _echo(request)


class _AsyncEcho(pb_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        return _echo(request)


def _announce(port: int) -> None:
    # The same lines inferd logs, so one launcher reads both.
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr)
    print("ready: echo servicer", file=sys.stderr, flush=True)


def _serve_sync(port: int, threads: int, reuse_port: bool) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), options=_options(reuse_port)
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_SyncEcho(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _announce(bound)
    stop.wait()
    server.stop(1).wait()


async def _serve_aio(port: int, reuse_port: bool) -> None:
    server = grpc.aio.server(options=_options(reuse_port))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_AsyncEcho(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    _announce(bound)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=FLAVORS, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=16, help="sync flavor's pool (16)")
    parser.add_argument(
        "--reuse-port", action="store_true",
        help="SO_REUSEPORT, so that several processes serve one port (off)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.flavor == "sync":
        _serve_sync(args.port, args.threads, args.reuse_port)
    elif args.flavor == "uvloop":
        import uvloop

        uvloop.run(_serve_aio(args.port, args.reuse_port))
    else:
        asyncio.run(_serve_aio(args.port, args.reuse_port))


if __name__ == "__main__":
    main()
