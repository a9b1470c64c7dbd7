"""PyTorch models for the tests, saved in each format the pytorch backend loads.

Every builder returns the module it saved (on CPU, in eval mode), so a test can call it
directly and compare with what the server answers.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

WIDTH = 8  # MLP input width
CLASSES = 4  # MLP output width
MAX_BATCH = 8


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(WIDTH, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, CLASSES),
    ).eval()


# Source of a model.py: the factory rebuilds the MLP's architecture; the weights come
# from model.safetensors, so the module and the file must agree exactly.
MLP_SOURCE = textwrap.dedent(
    f"""
    import torch


    def create_model():
        return torch.nn.Sequential(
            torch.nn.Linear({WIDTH}, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 32),
            torch.nn.Tanh(),
            torch.nn.Linear(32, {CLASSES}),
        )
    """
)


def mlp_config(name: str, filename: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        name: "{name}"
        backend: "pytorch"
        default_model_filename: "{filename}"
        max_batch_size: {MAX_BATCH}
        dynamic_batching {{ }}
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """
    ) + textwrap.dedent(extra)


def _model_dir(repository: Path, name: str, config: str) -> Path:
    version_dir = repository / name / "1"
    version_dir.mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    return version_dir


def write_torchscript(repository: Path, name: str, extra: str = "") -> torch.nn.Module:
    module = mlp()
    version_dir = _model_dir(repository, name, mlp_config(name, "model.pt", extra))
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.10+, still served
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(module, torch.zeros(1, WIDTH)).save(str(version_dir / "model.pt"))
    return module


def write_exported(repository: Path, name: str, extra: str = "") -> torch.nn.Module:
    module = mlp()
    version_dir = _model_dir(repository, name, mlp_config(name, "model.pt2", extra))
    batch = torch.export.Dim("batch", max=MAX_BATCH)
    program = torch.export.export(module, (torch.zeros(2, WIDTH),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(version_dir / "model.pt2"))
    return module


def write_python(
    repository: Path, name: str, extra: str = "", source: str = MLP_SOURCE, weights: bool = True
) -> torch.nn.Module:
    module = mlp()
    version_dir = _model_dir(repository, name, mlp_config(name, "model.py", extra))
    (version_dir / "model.py").write_text(source)
    if weights:
        state = {key: value.contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(version_dir / "model.safetensors"))
    return module


class AddSub(torch.nn.Module):
    """Two inputs taken by name (forward's arguments in the other order than the config),
    two outputs matched by their ``__<index>`` suffix."""

    def forward(self, right: torch.Tensor, left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return left + right, left - right


def write_add_sub(repository: Path, name: str) -> torch.nn.Module:
    config = textwrap.dedent(
        f"""
        name: "{name}"
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input [
          {{ name: "left" data_type: TYPE_INT32 dims: [ 3 ] }},
          {{ name: "right" data_type: TYPE_INT32 dims: [ 3 ] }}
        ]
        output [
          {{ name: "DIFF__1" data_type: TYPE_INT32 dims: [ 3 ] }},
          {{ name: "SUM__0" data_type: TYPE_INT32 dims: [ 3 ] }}
        ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """
    )
    version_dir = _model_dir(repository, name, config)
    module = AddSub().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(version_dir / "model.pt"))
    return module
