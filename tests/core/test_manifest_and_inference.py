"""Model loading: hashes verified before a session exists, manifest keys, shapes, providers."""

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from fleetloop_core.errors import InputError, ModelError
from fleetloop_core.inference import DEFAULT_PROVIDERS, TierModel, choose_providers
from fleetloop_core.contracts.manifest import load_manifest


def test_loads_and_answers(test_models):
    model = TierModel.load(test_models["T4"], providers=("cpu",))
    frame = np.zeros((128, 128, 3), np.uint8)
    out = model.infer(frame)
    assert out.probs.shape == (1, len(model.labels))
    assert np.isclose(out.probs.sum(), 1.0, atol=1e-4)
    assert out.embedding.shape[0] == 1 and out.embedding.shape[1] > 0
    assert out.uncertainty.shape == (1, 3)
    assert np.allclose(np.linalg.norm(out.embedding, axis=1), 1.0, atol=1e-4)  # unit length in the graph
    assert model.providers == ["CPUExecutionProvider"]


def test_in_graph_uncertainty_equals_python_functions(test_models, pool):
    from fleetloop_core import uncertainty as unc
    from fleetloop_sim import sim

    frames = sim.render_set(sim.make_site(0), pool.field_test, 40, seed=1).images
    model = TierModel.load(test_models["T3"], providers=("cpu",))
    out = model.infer_batch(frames)
    expected = np.stack([unc.entropy(out.probs), unc.margin(out.probs), unc.least_confidence(out.probs)], axis=1)
    assert np.allclose(out.uncertainty, expected, atol=2e-4)


def test_sha256_mismatch_loads_nothing(model_copy, monkeypatch):
    directory = model_copy("T4")
    onnx_path = directory / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    onnx_path.write_bytes(bytes(data))
    created = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(a))
    with pytest.raises(ModelError, match=r"model\.onnx: sha256 .* does not match"):
        TierModel.load(directory)
    assert created == []  # no session was ever created


def test_truncated_onnx_is_rejected_naming_the_file(model_copy):
    directory = model_copy("T4")
    onnx_path = directory / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"model\.onnx: size 1000 bytes does not match .*truncated"):
        TierModel.load(directory)


def test_missing_onnx_file(model_copy):
    directory = model_copy("T4")
    (directory / "model.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        TierModel.load(directory)


@pytest.mark.parametrize("key", ["labels", "input", "files", "tier", "version"])
def test_manifest_missing_key_names_key_and_file(model_copy, key):
    directory = model_copy("T4")
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError) as info:
        TierModel.load(directory)
    assert str(path) in str(info.value)
    assert f"missing key '{key}'" in str(info.value)


def test_manifest_bad_value_and_bad_json(model_copy):
    directory = model_copy("T4")
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["input"]["dtype"] = "float64"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"input\.dtype"):
        load_manifest(directory)
    path.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_manifest(directory)


def test_manifest_shape_disagreeing_with_graph(model_copy):
    directory = model_copy("T4")
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["input"]["shape"] = [-1, 96, 96, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="graph input shape"):
        TierModel.load(directory)


def test_manifest_label_count_disagreeing_with_graph(model_copy):
    directory = model_copy("T4")
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["labels"] = data["labels"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="classes, manifest lists"):
        TierModel.load(directory)


def test_wrong_input_shape_dtype_and_channels(test_models):
    model = TierModel.load(test_models["T4"], providers=("cpu",))
    with pytest.raises(InputError, match=r"expected input \(N, 128, 128, 3\) uint8, got \(1, 128, 128, 3\) float32"):
        model.run(np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(InputError, match=r"got \(1, 32, 32, 3\)"):
        model.run(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="frame dtype: expected uint8, got float32"):
        model.infer(np.zeros((128, 128, 3), np.float32))
    with pytest.raises(InputError, match=r"frame shape"):
        model.infer(np.zeros((0, 128, 3), np.uint8))
    with pytest.raises(InputError, match="frame channels: expected 3 for RGB, got 4"):
        model.infer(np.zeros((128, 128, 4), np.uint8))
    with pytest.raises(InputError, match=r"frame shape"):
        model.infer(np.zeros((2, 128, 128, 3, 1), np.uint8))


def test_colour_orders_agree(test_models, pool):
    import cv2
    from fleetloop_sim import sim

    model = TierModel.load(test_models["T4"], providers=("cpu",))
    frame = sim.render_set(sim.make_site(1), pool.field_test, 1, seed=3).images[0]
    rgb = model.infer(frame, "RGB").probs
    assert np.allclose(model.infer(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), "BGR").probs, rgb, atol=1e-5)
    assert np.allclose(model.infer(cv2.cvtColor(frame, cv2.COLOR_RGB2BGRA), "BGRA").probs, rgb, atol=1e-5)
    grey = model.infer(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), "GRAY").probs
    assert grey.shape == rgb.shape


def test_batch_equals_single(test_models, pool):
    from fleetloop_sim import sim

    model = TierModel.load(test_models["T4"], providers=("cpu",))
    frames = sim.render_set(sim.make_site(0), pool.field_test, 5, seed=2).images
    batch = model.infer_batch(frames, batch_size=2).probs
    singles = np.concatenate([model.infer(f).probs for f in frames])
    assert np.allclose(batch, singles, atol=1e-5)


def test_provider_fallback_order():
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(DEFAULT_PROVIDERS, everything) == everything
    assert choose_providers(DEFAULT_PROVIDERS, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(DEFAULT_PROVIDERS, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["cuda", "trt"], everything) == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["cpu"], everything) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="none of the execution providers"):
        choose_providers(["cuda"], ["CUDAExecutionProvider"][:0])


def test_real_session_falls_back_to_cpu_and_logs(test_models, caplog):
    # this onnxruntime build has no TensorRT/CUDA: the default preference must still load
    caplog.set_level(logging.INFO, logger="fleetloop_core.inference")
    model = TierModel.load(test_models["T4"])
    assert model.providers[-1] == "CPUExecutionProvider"
    assert "in use ['CPUExecutionProvider']" in caplog.text
    # asked for TensorRT first, running on the CPU: a WARNING that says so and why
    assert (
        "requested execution provider TensorrtExecutionProvider is not in use: this onnxruntime build does "
        "not have it" in caplog.text
    )
    assert any(r.levelname == "WARNING" and "TensorrtExecutionProvider" in r.message for r in caplog.records)


def test_provider_shortfall_names_both_ways_to_miss_the_requested_provider():
    from fleetloop_core.inference import provider_shortfall

    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    assert provider_shortfall(["trt", "cuda", "cpu"], [trt, cuda, cpu], [trt, cuda, cpu]) is None
    assert provider_shortfall(["cpu"], [cpu], [cpu]) is None
    # built with TensorRT but libnvinfer did not load: ONNX Runtime fell back to CUDA silently
    assert "libraries failed to load" in provider_shortfall(["tensorrt"], [trt, cuda, cpu], [cuda, cpu])
    assert "does not have it" in provider_shortfall(["cuda"], [cpu], [cpu])
