"""The model configuration as Triton's Python models see it: a JSON-shaped dict, and the
``pb_utils.ModelConfig`` that ``TritonPythonModel.auto_complete_config`` edits.

Triton prints the config with every field that has no presence (``max_batch_size: 0``,
``dims: []``, ``data_type: "TYPE_INVALID"``) and int64 fields as JSON numbers; models
index into it directly (``config["max_batch_size"]``), so the dict here does the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from google.protobuf import descriptor, json_format

from inferd.protos import model_config_pb2

_INT64_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def config_as_dict(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    """The config as Triton's JSON has it (``json.dumps`` of this is ``args["model_config"]``)."""
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(cast(descriptor.Descriptor, config.DESCRIPTOR), data)
    return data


def _int64_as_numbers(message: descriptor.Descriptor, data: dict[str, Any]) -> None:
    # protobuf's JSON mapping writes int64 as strings ("dims": ["4"]); Triton writes numbers.
    for field in message.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in value.values():
                    _int64_as_numbers(value_field.message_type, item)
            elif value_field.type in _INT64_TYPES:
                data[field.name] = {key: int(item) for key, item in value.items()}
        elif field.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _int64_as_numbers(field.message_type, item)
        elif field.type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


class ModelConfig:
    """What ``auto_complete_config`` receives: Triton's methods, editing the model's
    ModelConfig protobuf in place. Failures raise ValueError, as Triton's do."""

    def __init__(self, config: model_config_pb2.ModelConfig) -> None:
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        """A read-only view (a fresh copy): change the config through the methods."""
        return config_as_dict(self._config)

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._config.max_batch_size > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._config.max_batch_size}, but in "
                f"auto-complete-config function for model '{self._config.name}' specified "
                f"max_batch_size {max_batch_size}"
            )
        self._config.max_batch_size = max_batch_size

    def set_dynamic_batching(self) -> None:
        scheduler = self._config.WhichOneof("scheduling_choice")
        if scheduler not in (None, "dynamic_batching"):
            raise ValueError(
                f"Configuration specified scheduling_choice as '{scheduler}', but "
                f"auto-complete-config function for model '{self._config.name}' tries to set "
                "scheduling_choice as 'dynamic_batching'"
            )
        self._config.dynamic_batching.SetInParent()

    def add_input(self, input: Mapping[str, Any]) -> None:
        self._add("input", self._config.input, input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: Mapping[str, Any]) -> None:
        self._add("output", self._config.output, output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{self._config.name}' contains property other than 'decoupled'."
                )
        if "decoupled" not in transaction_policy_dict:
            return
        decoupled = bool(transaction_policy_dict["decoupled"])
        policy = self._config.model_transaction_policy
        if self._config.HasField("model_transaction_policy") and policy.decoupled != decoupled:
            raise ValueError(
                "trying to change decoupled property in auto-complete-config for model "
                f"'{self._config.name}', which is already set to '{policy.decoupled}'."
            )
        policy.decoupled = decoupled

    def _add(
        self,
        kind: str,
        tensors: Any,  # the repeated ModelInput / ModelOutput field
        spec: Mapping[str, Any],
        allowed: tuple[str, ...],
    ) -> None:
        model = self._config.name
        name = spec.get("name")
        where = f"{kind} '{name}' in auto-complete-config function for model '{model}'"
        unknown = [key for key in spec if key not in allowed]
        if unknown:
            raise ValueError(
                f"{where} contains property other than {_quoted(allowed)}: {_quoted(unknown)}."
            )
        if name is None:
            raise ValueError(
                f"{kind} in auto-complete-config function for model '{model}' is missing "
                "'name' property."
            )
        for required in ("data_type", "dims"):
            if required not in spec:
                raise ValueError(f"{where} is missing '{required}' property.")
        try:
            data_type = model_config_pb2.DataType.Value(spec["data_type"])
        except (ValueError, TypeError):
            raise ValueError(
                f"{where} has data_type {spec['data_type']!r}; expected a config type name "
                "such as 'TYPE_FP32' or 'TYPE_STRING'"
            ) from None
        try:
            dims = [int(dim) for dim in spec["dims"]]
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} has dims {spec['dims']!r}; expected a list of integers"
            ) from None

        for tensor in tensors:
            if tensor.name != name:
                continue
            if tensor.data_type not in (model_config_pb2.TYPE_INVALID, data_type):
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype "
                    f"{model_config_pb2.DataType.Name(tensor.data_type)} for {kind} '{name}', "
                    f"model provides {spec['data_type']}"
                )
            if tensor.dims and list(tensor.dims) != dims:
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects dims {dims} but the "
                    f"model configuration specifies dims {list(tensor.dims)}"
                )
            if "optional" in spec and tensor.optional != bool(spec["optional"]):
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects optional "
                    f"{bool(spec['optional'])} but the model configuration specifies optional "
                    f"{tensor.optional}"
                )
            break
        else:
            tensor = tensors.add(name=name)
        tensor.data_type = data_type
        del tensor.dims[:]
        tensor.dims.extend(dims)
        if "optional" in spec:
            tensor.optional = bool(spec["optional"])


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
