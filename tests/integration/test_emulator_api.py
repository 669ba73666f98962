"""The emulator speaks Triton's protocols: real tritonclient (HTTP and gRPC) against a real
emulator process, Prometheus text that the official parser reads, and fuzzed bad input that
never yields a 5xx or a crash."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ecrl import serving
from ecrl.emulator import http_api
from ecrl.emulator.fleet import Fleet, GpuNodeSpec, PodSpec
from ecrl.emulator.pod import TritonConfig
from ecrl.twin.profile import builtin_profile_path, load_profile
from tests.integration.standalone import standalone_emulator


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[dict]:
    sd = tmp_path_factory.mktemp("sd")
    with standalone_emulator("--pods", "2", "--sd-dir", str(sd)) as ports:
        yield {**ports, "sd": sd}


def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, *serving.INPUT_SHAPE), dtype=np.float32)


def test_tritonclient_http_infers_and_reloads(emulator: dict) -> None:
    import tritonclient.http as th

    c = th.InferenceServerClient(f"127.0.0.1:{emulator['http']}")
    assert c.is_server_live() and c.is_model_ready(serving.MODEL_NAME)
    inp = th.InferInput(serving.INPUT_NAME, [1, *serving.INPUT_SHAPE], serving.DATATYPE)
    inp.set_data_from_numpy(image(), binary_data=True)
    out = th.InferRequestedOutput(serving.OUTPUT_NAME, binary_data=True)
    r1 = c.infer(serving.MODEL_NAME, [inp], outputs=[out])
    r2 = c.infer(serving.MODEL_NAME, [inp], outputs=[out])
    logits = r1.as_numpy(serving.OUTPUT_NAME)
    assert logits.shape == (1, serving.NUM_CLASSES) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, r2.as_numpy(serving.OUTPUT_NAME))  # deterministic
    assert r1.get_response()["parameters"]["emulated"] is True
    c.load_model(serving.MODEL_NAME, config=json.dumps({"max_batch_size": 16}))
    assert c.get_model_config(serving.MODEL_NAME)["max_batch_size"] == 16
    with pytest.raises(Exception, match="max_batch_size"):
        c.load_model(serving.MODEL_NAME, config=json.dumps({"max_batch_size": -1}))


def test_tritonclient_grpc_infers_and_reports_errors_with_triton_codes(emulator: dict) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(f"127.0.0.1:{emulator['grpc']}")
    assert c.is_server_ready()
    meta = c.get_model_metadata(serving.MODEL_NAME)
    assert list(meta.inputs[0].shape) == [-1, *serving.INPUT_SHAPE]
    inp = tg.InferInput(serving.INPUT_NAME, [1, *serving.INPUT_SHAPE], serving.DATATYPE)
    inp.set_data_from_numpy(image())
    r = c.infer(serving.MODEL_NAME, [inp], outputs=[tg.InferRequestedOutput(serving.OUTPUT_NAME)])
    assert r.as_numpy(serving.OUTPUT_NAME).shape == (1, serving.NUM_CLASSES)
    bad = tg.InferInput(serving.INPUT_NAME, [1, 3, 224, 225], serving.DATATYPE)
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 225), np.float32))
    with pytest.raises(InferenceServerException) as err:
        c.infer(serving.MODEL_NAME, [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as err:
        c.infer("resnet50", [inp])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    stats = c.get_inference_statistics(serving.MODEL_NAME)
    assert stats.model_stats[0].inference_count >= 1


def test_metrics_parse_as_triton_and_dcgm_and_sd_lists_every_pod(emulator: dict) -> None:
    base = f"http://127.0.0.1:{emulator['metrics']}"
    sd = json.loads((emulator["sd"] / "triton.json").read_text())
    assert sorted(t["labels"]["pod"] for t in sd) == ["standalone-0", "standalone-1"]
    for target in sd:
        with urllib.request.urlopen(base + target["labels"]["__metrics_path__"]) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        # prometheus_client strips the counter's _total-less name the same way Prometheus does
        ok = fams["nv_inference_request_success"].samples[0]
        assert ok.labels == {"model": serving.MODEL_NAME, "version": "1", "emulated": "true"}
    dcgm = json.loads((emulator["sd"] / "dcgm.json").read_text())
    with urllib.request.urlopen(base + dcgm[0]["labels"]["__metrics_path__"]) as r:
        fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    util = fams["DCGM_FI_DEV_GPU_UTIL"].samples[0]
    assert util.labels["Hostname"] == "standalone" and util.labels["emulated"] == "true"
    assert 0 <= util.value <= 100


# -- fuzzing the HTTP entry point (in-process, thousands of cases) ------------------------
PROFILE = load_profile(builtin_profile_path("rtx3080-mobilenetv4"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=10,
)
shapes = st.lists(st.integers(-2, 300) | st.text(max_size=2), max_size=5)
inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from([serving.INPUT_NAME, "x"]) | json_values,
        "datatype": st.sampled_from(["FP32", "INT8"]) | json_values,
        "shape": shapes | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": json_values})
        | json_values,
        "data": json_values,
    },
)
headers_ = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(inputs, max_size=2) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={"name": st.sampled_from([serving.OUTPUT_NAME, "y"]) | json_values},
            ),
            max_size=2,
        )
        | json_values,
        "id": json_values,
        "parameters": json_values,
    },
)


@pytest.mark.slow
def test_fuzzed_infer_requests_get_400_never_5xx() -> None:
    async def go() -> None:
        f = Fleet(PROFILE, TritonConfig(), seed=0)
        f.set_node(GpuNodeSpec("box"))
        f.add_pod(PodSpec("p0", "ns", "box", 64.0, 4 << 30))
        app = http_api.inference_app(f)
        async with TestClient(TestServer(app)) as client:
            path = f"/v2/models/{serving.MODEL_NAME}/infer"

            @settings(
                max_examples=2000,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                header=headers_ | json_values,
                tail=st.binary(max_size=64),
                declared=st.none()
                | st.integers(-5, 10_000)
                | st.text("0123456789-x .", max_size=4),
            )
            def case(header: object, tail: bytes, declared: object) -> None:
                head = json.dumps(header).encode()
                hdr = {} if declared is None else {http_api.HEADER_LEN: str(declared)}
                if declared is None and tail:
                    hdr = {http_api.HEADER_LEN: str(len(head))}
                resp = asyncio.run_coroutine_threadsafe(
                    client.post(path, data=head + tail, headers=hdr), loop
                ).result(timeout=30)
                body = asyncio.run_coroutine_threadsafe(resp.text(), loop).result(timeout=30)
                assert resp.status in (200, 400), (resp.status, body)
                if resp.status == 400:
                    assert json.loads(body)["error"]

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(case)
            # The server still serves a good request after the storm.
            x = image()
            head = json.dumps(
                {
                    "inputs": [
                        {
                            "name": serving.INPUT_NAME,
                            "datatype": "FP32",
                            "shape": list(x.shape),
                            "parameters": {"binary_data_size": x.nbytes},
                        }
                    ],
                    "outputs": [{"name": serving.OUTPUT_NAME, "parameters": {"binary_data": True}}],
                }
            ).encode()
            resp = await client.post(
                path, data=head + x.tobytes(), headers={http_api.HEADER_LEN: str(len(head))}
            )
            assert resp.status == 200

    asyncio.run(go())
