"""The ``inferd`` command, and the server's own subcommands: ``serve``, ``demo-repository``.

Each layer declares its subcommands as ``inferd.commands`` entry points (pyproject.toml):
``models`` and ``infer`` live in inferd.clients.cli, ``bench`` in inferd.bench.cli. ``main``
finds a command by the name its user typed, and imports that command's module only, so
the server imports neither the clients nor bench, and ``inferd serve`` loads neither;
only ``inferd --help`` (or a mistyped command) loads them all, for their one-line help.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Protocol

from inferd.server.config import ServerConfig
from inferd.server.options import add_options, from_args

COMMANDS_GROUP = "inferd.commands"
# The order `inferd --help` lists the commands in; any other (a plugin's) follows by name.
_LISTED_FIRST = ("serve", "models", "infer", "bench", "demo-repository")


class Command(Protocol):
    """What an ``inferd.commands`` entry point names: a class, made with no arguments."""

    @property
    def help(self) -> str:
        """One line, for ``inferd --help``."""
        ...

    @property
    def description(self) -> str | None:
        """For ``inferd NAME --help``, above the options."""
        ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int:
        """The exit status; a user's mistake is a message on stderr, not a traceback."""
        ...


class Serve:
    help = "serve a model repository over gRPC"
    description = (
        "Serve a Triton-layout model repository over the Open Inference (KServe v2) gRPC "
        "protocol. Without --model-repository, serves the bundled demo models."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_options(parser, ServerConfig)

    def run(self, args: argparse.Namespace) -> int:
        from inferd.engines import EngineError
        from inferd.server.app import run

        config = from_args(ServerConfig, args)
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        log = logging.getLogger("inferd.server")
        if config.frontends < 1 or config.ring_bytes < 2**20:
            log.error("--frontends must be >= 1 and --frontend-ring-mib >= 1")
            return 2
        try:
            return run(config)
        except (OSError, EngineError, ValueError) as exc:
            log.error("%s", exc)
            return 1


class DemoRepository:
    help = "write the bundled demo model repository to a directory"
    description = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("directory", type=Path, help="a new or empty directory")

    def run(self, args: argparse.Namespace) -> int:
        from inferd.engines.demo.repository import build_demo_repository

        try:
            path = build_demo_repository(args.directory)
        except ValueError as exc:
            print(f"inferd demo-repository: {exc}", file=sys.stderr)
            return 1
        print(
            f"wrote the demo model repository to {path}; serve it with:\n"
            f"  inferd serve --model-repository {path}"
        )
        return 0


def _commands() -> dict[str, EntryPoint]:
    found = {entry.name: entry for entry in entry_points(group=COMMANDS_GROUP)}
    order = [name for name in _LISTED_FIRST if name in found]
    order += sorted(found.keys() - set(order))
    return {name: found[name] for name in order}


def build_parser(commands: Mapping[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
    """``inferd`` itself: the list of commands, each with its one-line help."""
    parser = argparse.ArgumentParser(
        prog="inferd",
        description="inferd: a gRPC inference server speaking the Open Inference (KServe v2) "
        "protocol, wire-compatible with Triton's clients and model repositories.",
    )
    listed = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in (_commands() if commands is None else commands).items():
        listed.add_parser(name, help=entry.load()().help)
    return parser


def command_parser(name: str, command: Command) -> argparse.ArgumentParser:
    """``inferd NAME``'s own parser, as argparse would make it for a subcommand."""
    parser = argparse.ArgumentParser(prog=f"inferd {name}", description=command.description)
    command.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not arguments or arguments[0] not in commands:
        # `inferd`, `inferd --help` or an unknown command: argparse lists the commands and
        # exits; the error below is for a line it would accept all the same.
        parser = build_parser(commands)
        args = parser.parse_args(arguments)
        parser.error(f"put the command first: inferd {args.command} ...")
    name, *rest = arguments
    command: Command = commands[name].load()()
    args = command_parser(name, command).parse_args(rest)
    try:
        return command.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
