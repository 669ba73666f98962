"""The chart's model-repository init container (deploy/helm/ecrl/files/prepare_model.py).

A tiny ONNX classifier shaped like the Hub's export (input ``pixel_values`` [1, 3, 224, 224],
output [1, 1000], fixed batch of one) is served over real HTTP from a loopback server.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ecrl import serving

SCRIPT = (
    Path(__file__).resolve().parents[2] / "deploy" / "helm" / "ecrl" / "files" / "prepare_model.py"
)
CONFIG = 'name: "mobilenetv4"\nmax_batch_size: 8\n'


@pytest.fixture(scope="module")
def pm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ecrl_chart_prepare_model", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def hub_like_model(
    path: Path, input_name: str = "pixel_values", classes: int = 1000, scale: float = 1e-3
) -> bytes:
    """GlobalAveragePool → Flatten → MatMul: [1, 3, 224, 224] → [1, classes], batch fixed at 1."""
    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) * np.float32(scale)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "hub_like",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder: (base URL, folder)."""
    root = tmp_path / "hub"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *_args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.pbtxt"
    path.write_text(CONFIG)
    return path


def test_downloads_renames_tensors_to_serving_names_and_installs_config(pm, hub, config, tmp_path):
    url, root = hub
    raw = hub_like_model(root / "model.onnx")
    repo = tmp_path / "models"

    assert pm.prepare(repo, pm.Source(f"{url}/model.onnx"), config) is True

    model_dir = repo / serving.MODEL_NAME
    assert (model_dir / "config.pbtxt").read_text() == CONFIG
    installed = onnx.load(str(model_dir / serving.MODEL_VERSION / "model.onnx"))
    (inp,), (out,) = installed.graph.input, installed.graph.output
    assert (inp.name, out.name) == (serving.INPUT_NAME, serving.OUTPUT_NAME)
    assert inp.type.tensor_type.shape.dim[0].dim_param  # batch made symbolic for Triton
    sess = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = sess.run(None, {"input": np.ones((3, *serving.INPUT_SHAPE), np.float32)})
    assert logits.shape == (3, serving.NUM_CLASSES)
    record = json.loads((model_dir / "1" / "source.json").read_text())
    assert record["sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["input"] == "pixel_values"
    assert not [p for p in model_dir.rglob("*") if p.name.startswith((".download-", "tmp"))]


def test_second_start_reuses_the_model_offline_and_refreshes_config(pm, hub, config, tmp_path):
    url, root = hub
    hub_like_model(root / "model.onnx")
    repo = tmp_path / "models"
    source = pm.Source(f"{url}/model.onnx")
    pm.prepare(repo, source, config)
    (root / "model.onnx").unlink()  # the Hub is gone: a download would fail
    config.write_text(CONFIG.replace("8", "16"))

    assert pm.prepare(repo, source, config) is False
    assert "max_batch_size: 16" in (repo / "mobilenetv4" / "config.pbtxt").read_text()


def test_checksum_mismatch_fails_and_installs_no_model(pm, hub, config, tmp_path):
    url, root = hub
    hub_like_model(root / "model.onnx")
    repo = tmp_path / "models"
    with pytest.raises(pm.PrepareError, match="sha256"):
        pm.prepare(repo, pm.Source(f"{url}/model.onnx", "0" * 64), config)
    assert not (repo / "mobilenetv4" / "1" / "model.onnx").exists()


def test_a_pinned_checksum_that_differs_from_the_recorded_one_downloads_again(
    pm, hub, config, tmp_path
):
    url, root = hub
    raw = hub_like_model(root / "model.onnx")
    repo = tmp_path / "models"
    pm.prepare(repo, pm.Source(f"{url}/model.onnx"), config)
    same = pm.Source(f"{url}/model.onnx", hashlib.sha256(raw).hexdigest().upper())
    assert pm.prepare(repo, same, config) is False  # recorded sha matches (case-insensitive)

    newer = hub_like_model(root / "model.onnx", scale=2e-3)  # the Hub file changed
    pinned = pm.Source(f"{url}/model.onnx", hashlib.sha256(newer).hexdigest())
    assert pm.prepare(repo, pinned, config) is True
    record = json.loads((repo / "mobilenetv4" / "1" / "source.json").read_text())
    assert record["sha256"] == pinned.sha256


def test_unreachable_hub_fails_naming_the_remedy(pm, hub, config, tmp_path):
    url, _root = hub
    with pytest.raises(pm.PrepareError, match="offline"):
        pm.prepare(tmp_path / "models", pm.Source(f"{url}/missing.onnx"), config, timeout_s=5)


def test_model_with_the_wrong_number_of_classes_is_refused(pm, hub, config, tmp_path):
    url, root = hub
    hub_like_model(root / "model.onnx", classes=10)
    with pytest.raises(pm.PrepareError, match="logits shape"):
        pm.prepare(tmp_path / "models", pm.Source(f"{url}/model.onnx"), config)
    assert not (tmp_path / "models" / "mobilenetv4" / "1" / "model.onnx").exists()


def test_rename_onto_an_existing_tensor_name_is_refused(pm, hub, config, tmp_path):
    url, root = hub
    hub_like_model(root / "model.onnx", input_name="logits_in")
    model = onnx.load(str(root / "model.onnx"))
    model.graph.node[0].output[0] = "input"  # an inner tensor already called "input"
    model.graph.node[1].input[0] = "input"
    onnx.save(model, str(root / "model.onnx"))
    with pytest.raises(pm.PrepareError, match="already has"):
        pm.prepare(tmp_path / "models", pm.Source(f"{url}/model.onnx"), config)


def test_file_url_works_for_an_offline_mirror(pm, config, tmp_path):
    hub_like_model(tmp_path / "mirror.onnx")
    assert pm.prepare(tmp_path / "models", pm.Source((tmp_path / "mirror.onnx").as_uri()), config)


def test_main_exits_1_with_a_json_log_line_on_failure(pm, hub, config, tmp_path, capsys):
    url, _root = hub
    argv = ["--repo", str(tmp_path / "m"), "--url", f"{url}/nope.onnx", "--config", str(config)]
    assert pm.main(argv) == 1
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["event"] == "failed" and "nope.onnx" in event["error"]


def test_main_rejects_a_missing_config_file_with_exit_2(pm, tmp_path):
    argv = ["--repo", str(tmp_path), "--url", "file:///x", "--config", str(tmp_path / "no")]
    with pytest.raises(SystemExit) as exc:
        pm.main(argv)
    assert exc.value.code == 2
