"""Engine statistics snapshots to the ModelStatistics RPC's protobuf. Protobuf stops here.

Field for field as Triton fills ``ModelStatisticsResponse``: the version as a string,
every ``InferStatistics`` duration present (the response-cache ones at zero, since inferd
has no cache), one ``InferBatchStatistics`` per executed batch size in ascending order.
``response_stats`` (decoupled models) keyed by response index as a string;
``memory_usage`` stays empty.
"""

from __future__ import annotations

from collections.abc import Iterable

from inferd.engines.statistics import Duration, StatisticsSnapshot
from inferd.protos import grpc_service_pb2 as pb


def _set_duration(field: pb.StatisticDuration, duration: Duration) -> None:
    field.SetInParent()  # present even when zero, as in Triton's answers
    field.count = duration.count
    field.ns = duration.ns


def encode_model_statistics(
    snapshots: Iterable[StatisticsSnapshot],
) -> pb.ModelStatisticsResponse:
    """One ``ModelStatistics`` per snapshot, in the order given."""
    response = pb.ModelStatisticsResponse()
    for snapshot in snapshots:
        stats = response.model_stats.add(
            name=snapshot.name,
            version=str(snapshot.version),
            last_inference=snapshot.last_inference_ms,
            inference_count=snapshot.inference_count,
            execution_count=snapshot.execution_count,
        )
        infer = stats.inference_stats
        _set_duration(infer.success, snapshot.success)
        _set_duration(infer.fail, snapshot.fail)
        _set_duration(infer.queue, snapshot.queue)
        _set_duration(infer.compute_input, snapshot.compute_input)
        _set_duration(infer.compute_infer, snapshot.compute_infer)
        _set_duration(infer.compute_output, snapshot.compute_output)
        _set_duration(infer.cache_hit, Duration())
        _set_duration(infer.cache_miss, Duration())
        for batch in snapshot.batch_stats:
            encoded = stats.batch_stats.add(batch_size=batch.batch_size)
            _set_duration(encoded.compute_input, batch.compute_input)
            _set_duration(encoded.compute_infer, batch.compute_infer)
            _set_duration(encoded.compute_output, batch.compute_output)
        for per_index in snapshot.response_stats:
            index_stats = stats.response_stats[str(per_index.index)]
            _set_duration(index_stats.compute_infer, per_index.compute_infer)
            _set_duration(index_stats.compute_output, per_index.compute_output)
            _set_duration(index_stats.success, per_index.success)
            _set_duration(index_stats.fail, per_index.fail)
            _set_duration(index_stats.empty_response, per_index.empty_response)
            _set_duration(index_stats.cancel, per_index.cancel)
    return response
