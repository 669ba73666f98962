"""MobileNetV4-Conv-Small rebuild: size and cost match the paper, shapes are right."""

from __future__ import annotations

import torch

from ecrl.calibrate.mobilenetv4 import (
    MNV4_CONV_SMALL_BLOCKS,
    UIBSpec,
    UniversalInvertedBottleneck,
    build_mobilenetv4_conv_small,
    count_macs,
    count_params,
)

# Qin et al. 2024 (arXiv:2404.10518), MNv4-Conv-S: 3.8 M parameters, 0.2 G MACs at 224 px.
PAPER_PARAMS = 3.8e6
PAPER_MACS = 0.2e9


def test_conv_small_parameter_count_is_within_5_percent_of_paper() -> None:
    params = count_params(build_mobilenetv4_conv_small())
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < 0.05


def test_conv_small_macs_at_224px_are_within_15_percent_of_paper() -> None:
    macs = count_macs(build_mobilenetv4_conv_small(), (3, 224, 224))
    assert abs(macs - PAPER_MACS) / PAPER_MACS < 0.15


def test_count_macs_of_single_conv_matches_hand_count() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 8 output channels x 4x4 positions x 3 input channels x 3x3 kernel
    assert count_macs(conv, (3, 4, 4)) == 8 * 16 * 3 * 9


def test_model_returns_one_logit_per_class_for_each_image() -> None:
    model = build_mobilenetv4_conv_small(num_classes=10)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_blocks_downsample_224px_input_to_7x7_with_128_channels() -> None:
    model = build_mobilenetv4_conv_small()
    with torch.no_grad():
        features = model.blocks(model.stem(torch.zeros(1, 3, 224, 224)))
    assert features.shape == (1, 128, 7, 7)
    assert len(MNV4_CONV_SMALL_BLOCKS) == 14


def test_convnext_variant_strides_on_its_start_depthwise_conv() -> None:
    block = UniversalInvertedBottleneck(16, UIBSpec(3, 0, stride=2, expand_ratio=2.0, out=16))
    with torch.no_grad():
        out = block.eval()(torch.zeros(1, 16, 8, 8))
    assert out.shape == (1, 16, 4, 4)
    assert not block.has_skip


def test_same_seed_builds_identical_weights() -> None:
    first = build_mobilenetv4_conv_small(seed=3).state_dict()
    second = build_mobilenetv4_conv_small(seed=3).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
