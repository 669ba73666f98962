"""Torch → ONNX for every graph the project exports (the model, the policy, the node scorer).

One place for the exporter choice and the metadata stamping: the TorchScript exporter is used
because the default dynamo exporter needs ``onnxscript``, which is not a project dependency; its
DeprecationWarnings are silenced for the export call only. Needs torch (the training extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int | None = None,
) -> Path:
    """Export ``module`` traced on ``example`` (opset None = torch's default)."""
    out = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        # F.pad lowers to a Slice with step -1 that torch cannot fold; onnxruntime folds it
        # at load (constant pads), so the warning asks nothing of the caller.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            module,
            example,
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
        )
    return out


def stamp_metadata(path: str | Path, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Add ``metadata`` to the model's metadata_props, run the full checker, save in place.

    Raises ``onnx.checker.ValidationError`` when the graph is invalid (nothing is saved then).
    """
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto
