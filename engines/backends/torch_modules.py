"""PyTorch models as files, and how a config's tensors meet a module's arguments.

Three formats, told apart by the model file's suffix:

- ``model.pt``: TorchScript (``torch.jit.save``), what Triton's ``pytorch_libtorch`` serves;
- ``model.pt2``: a ``torch.export`` program (``torch.export.save``); export it with a
  dynamic batch dimension (``torch.export.Dim``) or it serves one batch size only;
- ``model.py``: Python source whose factory (``create_model`` unless the ``factory``
  parameter names another) returns an ``nn.Module``; ``model.safetensors`` beside it,
  when present, holds the weights, loaded strictly.

Arguments follow Triton's PyTorch backend: inputs named ``<name>__<index>`` are passed
by index; otherwise inputs whose names are the forward method's argument names are
passed in that order; otherwise in config order. A module returns one tensor, a tuple
or list (matched to outputs by ``__<index>`` suffix, else config order), or a dict keyed
by output name.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from inferd.engines.errors import EngineError, ErrorCode

DEFAULT_FACTORY = "create_model"
WEIGHTS_FILENAME = "model.safetensors"
FORMATS = {".pt": "TorchScript", ".pt2": "torch.export program", ".py": "Python model file"}

_INDEXED_NAME = re.compile(r"^.+__(\d+)$")


def load_module(
    model_path: Path, model: str, factory_name: str, device: torch.device
) -> torch.nn.Module:
    """Load the model file onto ``device``, in inference (eval) mode."""
    suffix = model_path.suffix
    if suffix not in FORMATS:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': the pytorch backend loads {', '.join(FORMATS)} files "
            f"({', '.join(FORMATS.values())}), not '{model_path.name}'",
        )
    try:
        return _load(model_path, model, factory_name, device)
    except EngineError:
        raise
    except Exception as exc:  # torch's loaders raise anything from RuntimeError to EOFError
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': cannot load {model_path.name} as a {FORMATS[suffix]}: "
            f"{type(exc).__name__}: {exc}",
        ) from exc


def _load(model_path: Path, model: str, factory_name: str, device: torch.device) -> torch.nn.Module:
    module: torch.nn.Module
    if model_path.suffix == ".pt":
        module = torch.jit.load(str(model_path), map_location=device)
    elif model_path.suffix == ".pt2":
        # An exported program was traced in eval mode; its module refuses .eval().
        return torch.export.load(str(model_path)).module().to(device)
    else:
        module = _from_factory(model_path, model, factory_name)
        weights = model_path.parent / WEIGHTS_FILENAME
        if weights.exists():
            from safetensors.torch import load_file

            try:
                module.load_state_dict(load_file(str(weights)), strict=True)
            except RuntimeError as exc:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"model '{model}': {weights.name} does not match the module that "
                    f"{model_path.name} builds: {exc}",
                ) from None
        module = module.to(device)
    return module.eval()


def _from_factory(model_path: Path, model: str, factory_name: str) -> torch.nn.Module:
    # A module name of its own per model file, so two models' model.py never collide.
    identifier = re.sub(r"\W", "_", model)
    name = f"inferd_models.{identifier}.v{model_path.parent.name}"
    spec = importlib.util.spec_from_file_location(name, model_path)
    assert spec is not None and spec.loader is not None  # a .py path always has one
    source = importlib.util.module_from_spec(spec)
    sys.modules[name] = source  # dataclasses and pickling look their module up here
    spec.loader.exec_module(source)
    factory = getattr(source, factory_name, None)
    if not callable(factory):
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': {model_path.name} defines no callable '{factory_name}' "
            "(the factory that returns the nn.Module; the 'factory' parameter names another)",
        )
    built = factory()
    if not isinstance(built, torch.nn.Module):
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': {factory_name}() returned {type(built).__name__}, "
            "expected a torch.nn.Module",
        )
    return built


def _forward_argument_names(module: torch.nn.Module) -> list[str]:
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        return [argument.name for argument in schema.arguments[1:]]
    try:
        return list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return []


def _by_index_suffix(names: Sequence[str]) -> list[str] | None:
    """Names ordered by their ``__<index>`` suffix, if every name has one."""
    indices = []
    for name in names:
        match = _INDEXED_NAME.match(name)
        if match is None:
            return None
        indices.append(int(match[1]))
    if not names:
        return None
    return [name for _, name in sorted(zip(indices, names, strict=True))]


@dataclass(frozen=True, slots=True)
class CallingConvention:
    """How config tensors map to a module's positional arguments and results."""

    argument_order: tuple[str, ...]  # config input names, as the forward takes them
    result_order: tuple[str, ...]  # config output names, as a tuple result holds them

    @classmethod
    def infer(
        cls, module: torch.nn.Module, inputs: Sequence[str], outputs: Sequence[str]
    ) -> CallingConvention:
        arguments = _by_index_suffix(inputs)
        if arguments is None:
            forward_names = _forward_argument_names(module)
            if set(inputs) <= set(forward_names):
                arguments = sorted(inputs, key=forward_names.index)
            else:
                arguments = list(inputs)
        results = _by_index_suffix(outputs) or list(outputs)
        return cls(tuple(arguments), tuple(results))

    def arguments(self, tensors: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return [tensors[name] for name in self.argument_order]

    def results(self, model: str, returned: object) -> dict[str, torch.Tensor]:
        """The module's return value as config output name -> tensor."""
        if isinstance(returned, torch.Tensor):
            returned = (returned,)
        if isinstance(returned, Mapping):
            missing = [name for name in self.result_order if name not in returned]
            if missing:
                raise EngineError(
                    ErrorCode.INTERNAL,
                    f"model '{model}' returned a dict without output(s) {missing} "
                    f"(it has {sorted(map(str, returned))})",
                )
            return {name: returned[name] for name in self.result_order}
        if isinstance(returned, (tuple, list)) and len(returned) == len(self.result_order):
            return dict(zip(self.result_order, returned, strict=True))
        count = len(returned) if isinstance(returned, (tuple, list)) else 1
        raise EngineError(
            ErrorCode.INTERNAL,
            f"model '{model}' returned {count} result(s) of type {type(returned).__name__} "
            f"but its config declares {len(self.result_order)} output(s) "
            f"{list(self.result_order)}",
        )
