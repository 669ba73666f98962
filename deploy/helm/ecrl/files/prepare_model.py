"""Prepare Triton's model repository for MobileNetV4: download the ONNX file, check, install.

Runs as the init container of the chart's Triton pods (image: ecrl-policy-server, which has
``onnx``, ``onnxruntime`` and the ``ecrl`` package) and writes, atomically::

    <repo>/<model>/config.pbtxt          copied from --config (rendered by the chart)
    <repo>/<model>/<version>/model.onnx  the downloaded model, inputs/outputs renamed
    <repo>/<model>/<version>/source.json where it came from (url, sha256 of the download)

The model is timm's ``mobilenetv4_conv_small.e2400_r224_in1k`` as ONNX from the Hugging Face
Hub (``onnx-community/mobilenetv4_conv_small.e2400_r224_in1k``, file ``onnx/model.onnx``). Its
tensors are renamed to the names every client of the project uses (:mod:`ecrl.serving`:
``input`` [N, 3, 224, 224] FP32 → ``logits`` [N, 1000]), the batch dimension is made symbolic
if it is not, and one batch of two zero images is run through onnxruntime before the file is
installed. A second start finds ``source.json`` matching the requested URL (and checksum) and
downloads nothing, so a populated volume also works offline.

Exit codes: 0 ready, 1 download or check failed (the message says what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ecrl import serving

CHUNK_BYTES = 1 << 20
USER_AGENT = "ecrl-prepare-model/1"


class PrepareError(RuntimeError):
    """The repository could not be prepared; the message names the step and a remedy."""


@dataclass(frozen=True)
class Source:
    """Where the model comes from: a URL (https:// or file://) and an optional hex SHA-256."""

    url: str
    sha256: str = ""

    def matches(self, recorded: dict) -> bool:
        """True when ``recorded`` (a source.json) came from this URL and fits the checksum."""
        if recorded.get("url") != self.url:
            return False
        return not self.sha256 or recorded.get("sha256") == self.sha256.lower()


def log(event: str, **fields: object) -> None:
    """One JSON object per line on stdout (the container log)."""
    print(json.dumps({"event": event, "service": "prepare-model", **fields}), flush=True)


def download(url: str, dest: Path, timeout_s: float) -> str:
    """Stream ``url`` into ``dest``; returns the hex SHA-256 of what was written."""
    digest = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp, dest.open("wb") as out:
            while chunk := resp.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise PrepareError(
            f"download of {url} failed ({exc}); when the box is offline, copy model.onnx into "
            "the volume yourself or set model.url to a reachable mirror (file:// works)"
        ) from exc
    return digest.hexdigest()


def _rename(graph, old: str, new: str) -> None:
    """Rename a graph tensor everywhere it is named (graph inputs/outputs and node edges)."""
    if old == new:
        return
    taken = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    taken.update(name for node in graph.node for name in (*node.input, *node.output))
    if new in taken:
        raise PrepareError(f"cannot rename {old!r} to {new!r}: the graph already has a {new!r}")
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _symbolic_batch(value, name: str = "batch") -> None:
    """Make the first dimension of a graph input/output symbolic (Triton adds the batch)."""
    dim = value.type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        dim.dim_param = name


def normalize(src: Path, dest: Path) -> dict:
    """Rename the model's tensors to ecrl.serving's names and check it; returns its I/O."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise PrepareError(
            f"expected one input and one output, got {[v.name for v in inputs]} -> "
            f"{[v.name for v in graph.output]}"
        )
    original = {"input": inputs[0].name, "output": graph.output[0].name}
    _rename(graph, inputs[0].name, serving.INPUT_NAME)
    _rename(graph, graph.output[0].name, serving.OUTPUT_NAME)
    _symbolic_batch(inputs[0])
    _symbolic_batch(graph.output[0])
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    check_runs(dest)
    return original


def check_runs(path: Path, batch: int = 2) -> None:
    """Run one batch of zero images; the output must be ``[batch, NUM_CLASSES]`` logits."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.zeros((batch, *serving.INPUT_SHAPE), dtype=np.float32)
    try:
        (logits,) = sess.run([serving.OUTPUT_NAME], {serving.INPUT_NAME: images})
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        why = f"the model does not run on a [{batch}, 3, 224, 224] batch: {exc}"
        raise PrepareError(why) from exc
    if logits.shape != (batch, serving.NUM_CLASSES):
        raise PrepareError(f"logits shape {logits.shape}, want ({batch}, {serving.NUM_CLASSES})")


def _install(tmp: Path, dest: Path) -> None:
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)  # atomic: Triton (or a second init container) never sees half a file


def prepare(
    repo: Path,
    source: Source,
    config: Path,
    model: str = serving.MODEL_NAME,
    version: str = serving.MODEL_VERSION,
    timeout_s: float = 120.0,
) -> bool:
    """Make ``repo`` servable; returns True when the model was downloaded, False when reused."""
    model_dir = repo / model
    version_dir = model_dir / version
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    record_path = version_dir / "source.json"
    recorded = json.loads(record_path.read_text()) if record_path.exists() else {}
    fetched = not (onnx_path.exists() and source.matches(recorded))
    if fetched:
        with tempfile.TemporaryDirectory(dir=version_dir, prefix=".download-") as tmp_dir:
            raw = Path(tmp_dir) / "raw.onnx"
            t0 = time.monotonic()
            sha = download(source.url, raw, timeout_s)
            if source.sha256 and sha != source.sha256.lower():
                raise PrepareError(f"sha256 of {source.url} is {sha}, want {source.sha256}")
            seconds = round(time.monotonic() - t0, 2)
            log("downloaded", url=source.url, sha256=sha, bytes=raw.stat().st_size, s=seconds)
            ready = Path(tmp_dir) / "model.onnx"
            original = normalize(raw, ready)
            _install(ready, onnx_path)
            record = Path(tmp_dir) / "source.json"
            record.write_text(json.dumps({"url": source.url, "sha256": sha, **original}))
            _install(record, record_path)
    else:
        log("reused", path=str(onnx_path), sha256=recorded.get("sha256"))
    with (
        config.open("rb") as src,
        tempfile.NamedTemporaryFile("wb", dir=model_dir, delete=False) as tmp,
    ):
        shutil.copyfileobj(src, tmp)
    _install(Path(tmp.name), model_dir / "config.pbtxt")
    log("ready", repo=str(repo), model=model, version=version, downloaded=fetched)
    return fetched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="prepare_model.py",
        description="Download MobileNetV4 (ONNX) into a Triton model repository and check it.",
    )
    p.add_argument("--repo", type=Path, required=True, help="model repository root")
    p.add_argument("--url", required=True, help="https:// or file:// URL of the ONNX file")
    p.add_argument("--sha256", default="", help="expected hex SHA-256 of the download")
    p.add_argument("--config", type=Path, required=True, help="config.pbtxt to install")
    p.add_argument("--model", default=serving.MODEL_NAME)
    p.add_argument("--version", default=serving.MODEL_VERSION)
    p.add_argument("--timeout", type=float, default=120.0, help="download timeout, seconds")
    args = p.parse_args(argv)
    if not args.config.is_file():
        p.error(f"argument --config: {args.config} is not a file")
    try:
        prepare(
            args.repo,
            Source(args.url, args.sha256),
            args.config,
            args.model,
            args.version,
            args.timeout,
        )
    except PrepareError as exc:
        log("failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
