"""Validation of inference inputs and the emulated model's output, shared by HTTP and gRPC.

The emulator does not run MobileNetV4 (there is no GPU here); it checks every request exactly
as Triton checks it against the model configuration (name, datatype, shape, byte size) and
answers logits of the right shape computed by a fixed random linear map of the per-channel
means — deterministic for an input, cheap, and flagged ``emulated`` in the response
parameters.
"""

from __future__ import annotations

import numpy as np

from ecrl import serving

_W = np.random.default_rng(20261129).standard_normal((3, serving.NUM_CLASSES)).astype(np.float32)
_IMAGE_ELEMS = int(np.prod(serving.INPUT_SHAPE))


class TensorError(ValueError):
    """A request that does not match the model configuration (HTTP 400 / INVALID_ARGUMENT)."""


def check_input(name: str, datatype: str, shape: list[int], max_batch: int) -> int:
    """Checks one input's metadata against the model; returns its batch size."""
    if name != serving.INPUT_NAME:
        raise TensorError(f"unexpected inference input '{name}' for model '{serving.MODEL_NAME}'")
    if datatype != serving.DATATYPE:
        raise TensorError(
            f"inference input '{name}' data-type is '{datatype}', but model "
            f"'{serving.MODEL_NAME}' expects '{serving.DATATYPE}'"
        )
    want = [-1, *serving.INPUT_SHAPE]
    if len(shape) != len(want) or list(shape[1:]) != want[1:] or shape[0] < 1:
        raise TensorError(
            f"unexpected shape for input '{name}' for model '{serving.MODEL_NAME}'. "
            f"Expected {want}, got {list(shape)}"
        )
    if shape[0] > max_batch:
        raise TensorError(
            f"inference request batch-size must be <= {max_batch} for '{serving.MODEL_NAME}'"
        )
    return int(shape[0])


def decode(raw: bytes, batch: int) -> np.ndarray:
    """The raw little-endian FP32 bytes of one input as [batch, 3, 224, 224]."""
    want = batch * _IMAGE_ELEMS * 4
    if len(raw) != want:
        raise TensorError(
            f"input byte size mismatch for input '{serving.INPUT_NAME}' for model "
            f"'{serving.MODEL_NAME}'. Expected {want}, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(batch, *serving.INPUT_SHAPE)


def from_json_data(data: object, batch: int) -> np.ndarray:
    """The JSON ``data`` of an input (flat or nested list of numbers)."""
    try:
        arr = np.asarray(data, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise TensorError(f"input '{serving.INPUT_NAME}': data must be numbers") from None
    if arr.size != batch * _IMAGE_ELEMS:
        raise TensorError(
            f"unexpected number of elements for input '{serving.INPUT_NAME}': expected "
            f"{batch * _IMAGE_ELEMS}, got {arr.size}"
        )
    return arr.reshape(batch, *serving.INPUT_SHAPE)


def logits(x: np.ndarray) -> np.ndarray:
    """Emulated logits [batch, 1000] (float32)."""
    means = x.reshape(x.shape[0], 3, -1).mean(axis=2, dtype=np.float32)
    return (means @ _W).astype("<f4")
