"""Where a model's execution instances go, as Triton places them, for any GPU count.

Pure: ``_instance_specs`` takes the number of GPUs the backend sees, so GPU placement is
checked here without a GPU.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from inferd.engines.backends import InstanceSpec
from inferd.engines.errors import EngineError
from inferd.engines.repository.loader import _instance_specs
from inferd.protos import model_config_pb2


def _config(text: str = "") -> model_config_pb2.ModelConfig:
    return text_format.Parse(f'name: "m"\n{text}', model_config_pb2.ModelConfig())


def _placed(specs: list[InstanceSpec]) -> list[tuple[str, int | None]]:
    return [(spec.kind, spec.device) for spec in specs]


def test_no_group_and_no_gpu_gives_two_cpu_instances() -> None:
    config = _config()
    assert _placed(_instance_specs(config, gpu_count=0)) == [("CPU", None), ("CPU", None)]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_no_group_with_gpus_gives_one_instance_per_gpu() -> None:
    config = _config()
    assert _placed(_instance_specs(config, gpu_count=2)) == [("GPU", 0), ("GPU", 1)]
    assert list(config.instance_group[0].gpus) == [0, 1]  # reported as placed


def test_auto_is_gpu_when_there_is_one_else_cpu() -> None:
    group = "instance_group [ { kind: KIND_AUTO count: 2 } ]"
    assert _placed(_instance_specs(_config(group), gpu_count=1)) == [("GPU", 0), ("GPU", 0)]
    assert _placed(_instance_specs(_config(group), gpu_count=0)) == [("CPU", None)] * 2


def test_count_instances_go_on_each_listed_gpu() -> None:
    config = _config("instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0, 2 ] } ]")
    assert _placed(_instance_specs(config, gpu_count=4)) == [
        ("GPU", 0), ("GPU", 0), ("GPU", 2), ("GPU", 2),
    ]  # fmt: skip


def test_gpu_group_without_gpus_uses_every_gpu() -> None:
    config = _config("instance_group [ { kind: KIND_GPU count: 1 } ]")
    assert _placed(_instance_specs(config, gpu_count=3)) == [("GPU", 0), ("GPU", 1), ("GPU", 2)]


def test_several_groups_are_numbered_in_order() -> None:
    config = _config(
        "instance_group [ { kind: KIND_CPU count: 1 }, { kind: KIND_GPU count: 1 gpus: [1] } ]"
    )
    specs = _instance_specs(config, gpu_count=2)
    assert [(spec.index, spec.kind, spec.device) for spec in specs] == [
        (0, "CPU", None), (1, "GPU", 1),
    ]  # fmt: skip
    assert [group.name for group in config.instance_group] == ["m_0", "m_1"]


@pytest.mark.parametrize(
    ("group", "gpu_count", "words"),
    [
        ("{ kind: KIND_GPU count: 1 }", 0, "asks for GPU(s) of any kind, but its backend sees 0"),
        ("{ kind: KIND_GPU gpus: [ 1 ] }", 1, "asks for GPU(s) [1], but its backend sees 1"),
    ],
)
def test_a_gpu_that_is_not_there_fails_the_load(group: str, gpu_count: int, words: str) -> None:
    with pytest.raises(EngineError, match=r"instance group 'm' of model 'm' ") as raised:
        _instance_specs(_config(f"instance_group [ {group} ]"), gpu_count)
    assert words in raised.value.message
