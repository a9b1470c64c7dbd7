"""gRPC server reflection over inferd's own descriptor pool.

inferd's protocol descriptors live in a private pool (see ``inferd.protos._pool``) so
that inferd and tritonclient load side by side; reflection must be pointed at a pool
that holds them, plus the health and reflection services it also answers for.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from inferd.protos import grpc_service_pb2, model_config_pb2

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"


def enable_reflection(server: grpc.aio.Server) -> None:
    pool = descriptor_pool.DescriptorPool()
    # Dependencies before dependents: grpc_service.proto imports model_config.proto.
    for module in (model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    services = (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, server, pool=pool)
