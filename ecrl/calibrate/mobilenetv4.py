"""MobileNetV4-Conv-Small in plain torch, so calibration needs neither timm nor weights.

The twin's reference box serves ``mobilenetv4_conv_small`` (see
``ecrl/profiles/rtx3080-mobilenetv4.yaml``); latency depends on the graph, not on the
trained weights, so a faithful rebuild with random init is enough to time it anywhere.

Architecture: Qin et al. 2024, "MobileNetV4 — Universal Models for the Mobile Ecosystem"
(arXiv:2404.10518), MNv4-Conv-S table; block list cross-checked against the reference
implementation (tensorflow/models ``MNV4ConvSmall_BLOCK_SPECS``) and timm's
``_gen_mobilenet_v4`` ('small'). Published size: 3.8 M params, 0.2 G MACs at 224 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FusedIBSpec:
    """FusedIB: full k×k expansion conv (carries the stride), then 1×1 projection."""

    kernel: int
    stride: int
    expanded: int
    """Channels after the k×k expansion (absolute, as in the paper's table)."""
    out: int


@dataclass(frozen=True)
class UIBSpec:
    """Universal Inverted Bottleneck; the two optional depthwise convs name its variant.

    start_dw and mid_dw > 0: ExtraDW; mid only: IB (MobileNetV2 block); start only:
    ConvNext-like; neither: FFN. 0 means "no such depthwise conv".
    """

    start_dw: int
    mid_dw: int
    stride: int
    expand_ratio: float
    """Expanded channels = input channels × expand_ratio (rounded to a multiple of 8)."""
    out: int


STEM_CHANNELS = 32
HEAD_CHANNELS = 960
FEATURE_CHANNELS = 1280

# MNv4-Conv-S block list (paper table; TF reference spec), input 224 px.
MNV4_CONV_SMALL_BLOCKS: tuple[FusedIBSpec | UIBSpec, ...] = (
    FusedIBSpec(kernel=3, stride=2, expanded=32, out=32),  # 112 → 56 px
    FusedIBSpec(kernel=3, stride=2, expanded=96, out=64),  # 56 → 28 px
    UIBSpec(start_dw=5, mid_dw=5, stride=2, expand_ratio=3.0, out=96),  # ExtraDW, 28 → 14 px
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=2.0, out=96),  # IB
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=2.0, out=96),  # IB
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=2.0, out=96),  # IB
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=2.0, out=96),  # IB
    UIBSpec(start_dw=3, mid_dw=0, stride=1, expand_ratio=4.0, out=96),  # ConvNext
    UIBSpec(start_dw=3, mid_dw=3, stride=2, expand_ratio=6.0, out=128),  # ExtraDW, 14 → 7 px
    UIBSpec(start_dw=5, mid_dw=5, stride=1, expand_ratio=4.0, out=128),  # ExtraDW
    UIBSpec(start_dw=0, mid_dw=5, stride=1, expand_ratio=4.0, out=128),  # IB
    UIBSpec(start_dw=0, mid_dw=5, stride=1, expand_ratio=3.0, out=128),  # IB
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=4.0, out=128),  # IB
    UIBSpec(start_dw=0, mid_dw=3, stride=1, expand_ratio=4.0, out=128),  # IB
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10 %.

    Same rule as the reference implementations, so expanded widths match theirs.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → optional ReLU; ``groups=in_chs`` makes it depthwise."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int,
        stride: int = 1,
        *,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class FusedInvertedBottleneck(nn.Module):
    """FusedIB: k×k conv expands (and strides), 1×1 conv projects; residual when shapes match.

    Both convs are followed by BN + ReLU, as in the reference spec (two ``convbn`` rows).
    """

    def __init__(self, in_chs: int, spec: FusedIBSpec) -> None:
        super().__init__()
        self.expand = ConvBnAct(in_chs, spec.expanded, spec.kernel, spec.stride)
        self.project = ConvBnAct(spec.expanded, spec.out, 1)
        self.has_skip = spec.stride == 1 and in_chs == spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, project, add the shortcut when the block keeps the shape."""
        y = self.project(self.expand(x))
        return x + y if self.has_skip else y


class UniversalInvertedBottleneck(nn.Module):
    """UIB: [start DW] → 1×1 expand → [mid DW] → 1×1 linear projection (+ shortcut).

    The stride sits on the mid DW when there is one, otherwise on the start DW (the
    reference's ``middle_dw_downsample=True``). Start DW and projection have no ReLU.
    """

    def __init__(self, in_chs: int, spec: UIBSpec) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * spec.expand_ratio)
        start_stride = 1 if spec.mid_dw else spec.stride
        self.start_dw: nn.Module = (
            ConvBnAct(in_chs, in_chs, spec.start_dw, start_stride, groups=in_chs, act=False)
            if spec.start_dw
            else nn.Identity()
        )
        self.expand = ConvBnAct(in_chs, mid_chs, 1)
        self.mid_dw: nn.Module = (
            ConvBnAct(mid_chs, mid_chs, spec.mid_dw, spec.stride, groups=mid_chs)
            if spec.mid_dw
            else nn.Identity()
        )
        self.project = ConvBnAct(mid_chs, spec.out, 1, act=False)
        self.has_skip = spec.stride == 1 and in_chs == spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the four stages, add the shortcut when the block keeps the shape."""
        y = self.project(self.mid_dw(self.expand(self.start_dw(x))))
        return x + y if self.has_skip else y


class MobileNetV4(nn.Module):
    """Stem → blocks → 1×1 conv to 960 → global pool → 1×1 conv to 1280 → classifier."""

    def __init__(
        self,
        blocks: Sequence[FusedIBSpec | UIBSpec] = MNV4_CONV_SMALL_BLOCKS,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, STEM_CHANNELS, 3, stride=2)
        layers: list[nn.Module] = []
        in_chs = STEM_CHANNELS
        for spec in blocks:
            if isinstance(spec, FusedIBSpec):
                layers.append(FusedInvertedBottleneck(in_chs, spec))
            else:
                layers.append(UniversalInvertedBottleneck(in_chs, spec))
            in_chs = spec.out
        self.blocks = nn.Sequential(*layers)
        self.head = ConvBnAct(in_chs, HEAD_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.features = ConvBnAct(HEAD_CHANNELS, FEATURE_CHANNELS, 1)
        self.classifier = nn.Linear(FEATURE_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) for images of shape (batch, 3, H, W)."""
        x = self.head(self.blocks(self.stem(x)))
        x = self.features(self.pool(x))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """He-normal convs, unit BN, small classifier: keeps random-init activations finite."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01, generator=generator)
            nn.init.zeros_(module.bias)


def _calibrate_batchnorm(model: nn.Module, generator: torch.Generator, images: int = 8) -> None:
    """Set BN running statistics from one random batch, as training would have done.

    Without it, eval-mode BN (mean 0, var 1) lets random-init activations grow through the
    residual stack to logits in the hundreds, which makes torch-vs-ONNX parity meaningless.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(images, 3, 224, 224, generator=generator))
    for norm in norms:
        norm.momentum = 0.1  # torch default
    model.eval()


def build_mobilenetv4_conv_small(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """MobileNetV4-Conv-Small with seeded random weights, in eval mode (for timing/export).

    Weights are random (latency does not depend on them); BN statistics are set from one
    seeded random batch so activations and logits have a trained-like scale.
    """
    model = MobileNetV4(MNV4_CONV_SMALL_BLOCKS, num_classes)
    generator = torch.Generator().manual_seed(seed)
    _init_weights(model, generator)
    _calibrate_batchnorm(model, generator)
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_shape: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one image of shape (C, H, W) through Conv2d and Linear layers.

    Counted by forward hooks on a batch-1 pass, the convention behind published MAC
    figures (BN, ReLU, pooling and additions are not counted).
    """
    total = 0

    def conv_hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += out.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(
        module: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += out.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
