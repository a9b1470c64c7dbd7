"""The engine host and the request path in this process, driven through a codec that is
not gRPC's: a decode and an encode of plain dicts are all a front door brings, so the
next front door (HTTP) is a codec and routes. Real models from the demo repository."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from inferd.engines import EngineError, ErrorCode, ErrorResponse, InferRequest, InferResponse
from inferd.engines.client_memory.system import RequestRegions
from inferd.engines.options import RequestOptions
from inferd.engines.types import InputTensor
from inferd.protos.datatypes import datatype_of
from inferd.server.config import ServerConfig
from inferd.server.engine_host import EngineHost
from inferd.server.request_path import Codec, InferCall, parse_version
from inferd.server.services import FrontServices

T = TypeVar("T")
WAIT_S = 60.0  # bound on each call; the models answer in milliseconds

Message = dict[str, Any]


def _decode(
    message: Message, deadline: float | None, regions: RequestRegions | None
) -> InferRequest:
    return InferRequest(
        model_name=message["model"],
        model_version=parse_version(message.get("version", "")),
        inputs=[
            # Typed contents: a flat array, checked against the shape by element count.
            InputTensor(name, datatype_of(array), array.shape, array.reshape(-1))
            for name, array in message["inputs"].items()
        ],
        options=RequestOptions.from_parameters(message.get("parameters", {})),
        deadline=deadline,
    )


def _encode(response: InferResponse, regions: RequestRegions | None) -> Message:
    outputs = {output.name: output.data.tolist() for output in response.outputs}
    return {"model": response.model_name, "outputs": outputs, "final": response.final}


DICTS = Codec(_decode, _encode)


def _never_decoded(message: Message, deadline: float | None, regions: RequestRegions | None) -> Any:
    raise AssertionError("the request was decoded before its model was looked up")


def _call(message: Message) -> InferCall[Message]:
    return InferCall(
        message,
        message["model"],
        message.get("version", ""),
        message.get("id", ""),
        set(),
        None,
        lambda: None,
    )


def _simple(version: str = "") -> Message:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    return {"model": "simple", "version": version, "inputs": {"INPUT0": a, "INPUT1": a}}


def _repeat(values: list[int], **parameters: Any) -> Message:
    inputs = {
        "IN": np.array(values, dtype=np.int32),
        "DELAY": np.zeros(len(values), dtype=np.uint32),
        "WAIT": np.zeros(1, dtype=np.uint32),
    }
    return {"model": "repeat_int32", "inputs": inputs, "parameters": parameters}


def _serve(
    repository: Path, test: Callable[[EngineHost, FrontServices], Awaitable[T]], **config: Any
) -> T:
    async def main() -> T:
        settings = ServerConfig(model_repository=repository, metrics_port=None, **config)
        async with EngineHost(settings) as host:
            return await asyncio.wait_for(test(host, host.front_services()), WAIT_S)

    return asyncio.run(main())


async def _collect(services: FrontServices, message: Message) -> list[Message | ErrorResponse]:
    return [item async for item in services.requests.stream(_call(message), DICTS)]


def test_a_request_runs_through_any_codec(demo_repository: Path) -> None:
    async def test(host: EngineHost, services: FrontServices) -> Message:
        return await services.requests.infer(_call(_simple()), DICTS)

    answer = _serve(demo_repository, test)
    a = np.arange(16).reshape(1, 16)
    assert answer == {
        "model": "simple",
        "outputs": {"OUTPUT0": (a + a).tolist(), "OUTPUT1": (a - a).tolist()},
        "final": True,
    }


@pytest.mark.parametrize(
    ("model", "version", "code", "message"),
    [
        ("nope", "", ErrorCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
        (
            "simple",
            "9",
            ErrorCode.NOT_FOUND,
            "Request for unknown model: 'simple' version 9 is not found",
        ),
        (
            "simple",
            "x",
            ErrorCode.INVALID_ARGUMENT,
            "failed to get model version from specified version string 'x' (details: stol), "
            "version should be an integral value > 0",
        ),
    ],
)
def test_the_model_is_looked_up_before_anything_is_decoded(
    demo_repository: Path, model: str, version: str, code: ErrorCode, message: str
) -> None:
    never = Codec(_never_decoded, _encode)

    async def test(host: EngineHost, services: FrontServices) -> list[EngineError]:
        call = _call({"model": model, "version": version})
        failures = []
        for attempt in (services.requests.infer(call, never), _collect_raw(services, call)):
            with pytest.raises(EngineError) as failed:
                await attempt
            failures.append(failed.value)
        return failures

    for failure in _serve(demo_repository, test):
        assert (failure.code, failure.message) == (code, message)


async def _collect_raw(services: FrontServices, call: InferCall[Message]) -> None:
    async for _ in services.requests.stream(call, Codec(_never_decoded, _encode)):
        pass


def test_a_stream_yields_every_response_and_the_bare_final_flag_only_when_asked(
    demo_repository: Path,
) -> None:
    async def test(host: EngineHost, services: FrontServices) -> tuple[list[Any], list[Any]]:
        plain = await _collect(services, _repeat([4, 5, 6]))
        asked = await _collect(services, _repeat([4], triton_enable_empty_final_response=True))
        return plain, asked

    plain, asked = _serve(demo_repository, test)
    assert [item["outputs"]["OUT"] for item in plain] == [[4], [5], [6]]
    assert all(not item["final"] for item in plain)  # the bare end is not sent
    assert [(item["outputs"], item["final"]) for item in asked] == [
        ({"OUT": [4], "IDX": [0]}, False),
        ({}, True),
    ]


def test_a_decoupled_model_refuses_one_response_calls(demo_repository: Path) -> None:
    async def test(host: EngineHost, services: FrontServices) -> EngineError:
        with pytest.raises(EngineError) as refused:
            await services.requests.infer(_call(_repeat([1])), DICTS)
        return refused.value

    refused = _serve(demo_repository, test)
    assert refused.code is ErrorCode.UNSUPPORTED
    assert "decoupled transaction policy" in refused.message


def test_the_host_tells_of_every_model_change_before_its_caller_hears(
    demo_repository: Path,
) -> None:
    seen: list[bool] = []  # at each change: does simple_int8 serve?

    async def main() -> None:
        config = ServerConfig(
            model_repository=demo_repository,
            metrics_port=None,
            model_control_mode="explicit",
            load_models=("simple", "simple_int8"),
        )

        async def changed() -> None:
            try:
                host.engine.model_info("simple_int8", None)
            except EngineError:
                seen.append(False)
            else:
                seen.append(True)

        host = EngineHost(config, on_models_changed=changed)
        async with host:
            assert seen == []  # the startup loads are not changes anyone waits on
            await host.engine.unload_model("simple_int8")
            assert seen == [False]  # told with the change applied, before unload returned
            await host.engine.load_model("simple_int8", demo_repository / "simple_int8")
            assert seen == [False, True]
            with pytest.raises(EngineError):
                await host.engine.load_model("broken", demo_repository / "absent")
            assert seen == [False, True, True]  # told even when a load fails
        assert not host.engine.is_ready()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"gil_switch_interval_s": 0.0}, "the GIL switch interval must be > 0 seconds"),
        ({"load_models": ("simple",)}, "--load-model is only allowed with"),
    ],
)
def test_bad_flags_fail_when_the_host_is_built(
    demo_repository: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EngineHost(ServerConfig(model_repository=demo_repository, **config))
