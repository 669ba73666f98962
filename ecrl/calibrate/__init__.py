"""Calibration: measure what one inference costs on a box and write it as a twin profile.

Two targets (``ecrl calibrate local-cpu | triton``):

- ``mobilenetv4`` rebuilds the served model in plain torch (no timm, no weights needed for
  latency work); ``measure`` exports it to ONNX, times it with ONNX Runtime and the
  KServe-v2 JSON path on the local CPU, and writes a profile ``ecrl.twin.profile`` loads.
  These pull in torch, which the rest of ``ecrl`` avoids.
- against a live Triton (or the testbed's emulator): ``points`` (the grid and what one
  setting measured), ``triton_io`` (metrics, model control, closed-loop tritonclient load),
  ``sweep`` (the grid run), ``fit`` (least-squares service times), ``predict`` (the twin's
  pod model at each point), ``triton_profile`` (the YAML) and ``report`` (the twin's error);
  ``triton_cli`` is the subcommand. No torch; ``tritonclient`` (testbed extra) for the sweep.

Import the submodules directly.
"""
