"""The served model as Triton and its clients see it: one definition for the emulator, the
Locust users, the model-control calls (actuator, testbed, calibration) and the deployment
manifests.

MobileNetV4-conv-small takes ImageNet-normalized 224×224 RGB images in NCHW float32 and
returns 1000 logits (timm's ``mobilenetv4_conv_small`` pretrained config: bicubic resize,
crop_pct 0.875, ImageNet mean/std).
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "mobilenetv4"
MODEL_VERSION = "1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DATATYPE = "FP32"
IMAGE_SIZE = 224
INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
"""Per image; the batch dimension is added in front (Triton ``max_batch_size`` > 0)."""
NUM_CLASSES = 1000
CROP_PCT = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_config(
    max_batch_size: int, max_queue_delay_us: int, instance_count: int
) -> dict[str, Any]:
    """The model configuration a load-with-config sends (``parameters.config``): batching,
    the dynamic batcher's delay and the GPU instance count; Triton keeps the rest of the
    model's configuration and places the instances on the GPUs it sees."""
    return {
        "max_batch_size": int(max_batch_size),
        "dynamic_batching": {"max_queue_delay_microseconds": int(max_queue_delay_us)},
        "instance_group": [{"count": int(instance_count), "kind": "KIND_GPU"}],
    }
