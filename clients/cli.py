"""``inferd models`` and ``inferd infer``: talk to a running server.

Client commands, so they live with the clients and depend on nothing but them and the
protocol; the ``inferd`` dispatcher finds them through their ``inferd.commands`` entry
points (pyproject.toml).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from inferd.clients import Client, InferdError
from inferd.protos.datatypes import NUMPY_DTYPES

_DEFAULT_URL = "127.0.0.1:8001"


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-u", "--url", default=_DEFAULT_URL, help="server (%(default)s)")


def _failed(command: str, exc: Exception) -> int:
    # The server's answer (or the client's refusal of a bad URL) is the user's news, not
    # a bug: one line, no traceback.
    print(f"inferd {command}: {exc}", file=sys.stderr)
    return 1


class Models:
    help = "list a running server's models and states"
    description = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _add_url(parser)

    def run(self, args: argparse.Namespace) -> int:
        try:
            with Client(args.url) as client:
                for model in client.repository_index():
                    # Model control lists models never loaded with no state at all, as
                    # Triton does.
                    line = f"{model.name}\t{model.version or '-'}\t{model.state or 'NOT LOADED'}"
                    print(f"{line}\t{model.reason}" if model.reason else line)
        except (InferdError, ValueError) as exc:
            return _failed("models", exc)
        return 0


def _parse_input(spec: str) -> tuple[str, object]:
    name, sep, values = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--input wants NAME=VALUES, got {spec!r}")
    try:
        parsed = json.loads(values)
    except json.JSONDecodeError:
        parsed = [value.strip() for value in values.split(",")]
    return name, parsed


class Infer:
    help = "send one inference request to a running server"
    description = (
        "Send one request and print the outputs as JSON. Datatypes and shapes come from the "
        "model's metadata; a batched model gets a batch of one. Example: inferd infer "
        "simple --input INPUT0=[1,2,...] --input INPUT1=[...]"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model")
        parser.add_argument(
            "--input",
            type=_parse_input,
            action="append",
            required=True,
            metavar="NAME=VALUES",
            help="a JSON list (nested for several dims) or comma-separated values; repeat "
            "per input",
        )
        parser.add_argument("--output", action="append", metavar="NAME", help="only these outputs")
        parser.add_argument("--model-version", default="", help="(default: the latest)")
        _add_url(parser)

    def run(self, args: argparse.Namespace) -> int:
        try:
            return _infer(args)
        except (InferdError, ValueError) as exc:
            return _failed("infer", exc)


def _infer(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        metadata = client.model_metadata(args.model, args.model_version)
        declared = {tensor.name: tensor for tensor in metadata.inputs}
        inputs = {}
        for name, values in args.input:
            if name not in declared:
                print(
                    f"model '{args.model}' has no input '{name}' (inputs: {', '.join(declared)})",
                    file=sys.stderr,
                )
                return 2
            tensor = declared[name]
            if tensor.datatype == "BYTES":
                array = np.array(values, dtype=np.object_)
                array = np.vectorize(lambda v: str(v).encode(), otypes=[object])(array)
            else:
                array = np.array(values, dtype=NUMPY_DTYPES[tensor.datatype])
            # A batched model's inputs take a leading batch dimension: add one of 1.
            if len(tensor.shape) == array.ndim + 1 and tensor.shape[0] == -1:
                array = array[np.newaxis, ...]
            inputs[name] = array
        outputs = client.infer(
            args.model, inputs, outputs=args.output or None, version=args.model_version
        )
    printable = {
        name: np.vectorize(lambda v: v.decode("utf-8", "replace"), otypes=[object])(value).tolist()
        if value.dtype == np.object_
        else value.tolist()
        for name, value in outputs.items()
    }
    print(json.dumps(printable, indent=2))
    return 0
