"""The served model as Triton and its clients see it: one definition for the emulator, the
Locust users, the actuator's model-control calls and the deployment manifests.

MobileNetV4-conv-small takes ImageNet-normalized 224×224 RGB images in NCHW float32 and
returns 1000 logits (timm's ``mobilenetv4_conv_small`` pretrained config: bicubic resize,
crop_pct 0.875, ImageNet mean/std).
"""

from __future__ import annotations

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
