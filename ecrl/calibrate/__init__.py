"""Calibration: measure what one inference costs on a box and write it as a twin profile.

``mobilenetv4`` rebuilds the served model in plain torch (no timm, no weights needed for
latency work); ``measure`` exports it to ONNX, times it with ONNX Runtime and the
KServe-v2 JSON path on the local CPU, and writes a profile ``ecrl.twin.profile`` loads.
Import the submodules directly: they pull in torch, which the rest of ``ecrl`` avoids.
"""
