"""imgserve build: LiteRT conversion, verification gates, publishing, serving; TF-TRT's
pre-conversion logic and its clear failure where TensorFlow has no TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from imgserve.cli import main as imgserve
from model_contract.preprocess import PreprocessSpec
from server.app import create_app
from server.settings import BatchingSettings, Settings
from tests.live_server import live_server
from trt_build import litert, sensitivity, tftrt
from trt_build.builder import BuildRequest, VerificationFailed, build
from trt_build.eval_images import evaluation_tensors
from trt_build.verify import Gate, compare

SOURCE = Path("models/efficientnet_lite0/1")
PREPROCESSING = PreprocessSpec(resize_shorter_side=256, crop_size=224, interpolation="bicubic")


@pytest.fixture(scope="module")
def fp16_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    output = repository / "efficientnet_lite0" / "2"
    build(BuildRequest(model_repository / "efficientnet_lite0" / "1", "litert", "fp16", output, eval_count=60))
    return repository


@pytest.fixture(scope="module")
def int8_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    output = repository / "efficientnet_lite0" / "3"
    source = model_repository / "efficientnet_lite0" / "1"
    build(BuildRequest(source, "litert", "int8", output, calibration_count=100, eval_count=100))
    return repository


def test_a_published_build_carries_its_verification_report(fp16_repository: Path) -> None:
    version = fp16_repository / "efficientnet_lite0" / "2"
    manifest = json.loads((version / "manifest.json").read_text())
    assert (manifest["runtime"], manifest["artifact"], manifest["version"]) == ("litert", "model.tflite", 2)
    report = manifest["build"]["verification"]
    assert report["passed"] and report["images"] == 60 and report["failures"] == []
    assert report["decided_top1_agreement"] >= 0.995 and report["top1_in_source_top5"] == 1.0
    # On every image, near ties included: one of these 60 is a near tie (0.2035 against 0.2048)
    # that fp16 weights flip.
    assert report["top1_agreement"] >= 0.98
    assert report["built_bytes"] < report["source_bytes"] / 3  # fp16 weights, no graph overhead
    assert manifest["build"]["source"] == {"name": "efficientnet_lite0", "version": 1}
    assert manifest["preprocessing"]["crop_size"] == 224 and len(manifest["labels"]) == 1000


def test_imgserve_verify_checks_a_published_build_against_its_source(
    model_repository: Path, fp16_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = model_repository / "efficientnet_lite0" / "1"
    built = fp16_repository / "efficientnet_lite0" / "2"
    assert imgserve(["verify", str(source), str(built), "--eval-count", "60"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["images"] == 60 and report["decided_top1_agreement"] >= 0.995
    assert report["max_abs_prob_diff"] < 0.05  # fp16 weights on the same tensors: small differences


def test_the_litert_build_is_served_through_the_http_api(fp16_repository: Path, photo_bytes: dict[str, bytes]) -> None:
    settings = Settings(model_repository=fp16_repository, batching=BatchingSettings(max_batch_size=4))
    with live_server(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        (model,) = client.get("/v1/models").json()["models"]
        assert (model["runtime"], model["version"]) == ("litert", 2)
        body = client.post("/v1/classify", content=photo_bytes["coffee"], headers={"Content-Type": "image/png"}).json()
        assert body["class"] == "espresso" and body["version"] == 2


def test_an_int8_build_runs_integer_kernels_with_float_probabilities(int8_repository: Path) -> None:
    version = int8_repository / "efficientnet_lite0" / "3"
    report = json.loads((version / "manifest.json").read_text())["build"]["verification"]
    assert report["passed"] and report["decided_top1_agreement"] >= 0.99 and report["top1_in_source_top5"] >= 0.99
    kinds = _op_output_dtypes((version / "model.tflite").read_bytes())
    assert {dtype for name, dtype in kinds if name in ("CONV_2D", "DEPTHWISE_CONV_2D")} == {np.int8}
    assert kinds[-1] == ("SOFTMAX", np.float32)  # probabilities are not rounded to 1/256


def test_the_int8_build_is_served_with_its_classes(int8_repository: Path, photo_bytes: dict[str, bytes]) -> None:
    settings = Settings(model_repository=int8_repository, batching=BatchingSettings(max_batch_size=4))
    with live_server(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        (model,) = client.get("/v1/models").json()["models"]
        assert (model["runtime"], model["version"]) == ("litert", 3)
        for photo, expected in (("coffee", {"espresso"}), ("chelsea", {"tiger cat", "tabby", "Egyptian cat"})):
            body = client.post("/v1/classify", content=photo_bytes[photo], headers={"Content-Type": "image/png"})
            answer = body.json()
            assert answer["version"] == 3 and answer["class"] in expected


def _op_output_dtypes(model: bytes) -> list[tuple[str, type]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return [(op["op_name"], dtypes[op["outputs"][0]]) for op in interpreter._get_ops_details()]


def test_named_layers_stay_float_in_an_otherwise_int8_model(model_repository: Path) -> None:
    saved_model = model_repository / "efficientnet_lite0" / "1" / "saved_model"
    calibration = evaluation_tensors(PREPROCESSING, 8, seed=1)
    layers = sensitivity.quantized_layers(saved_model, calibration, calibration[:2])
    assert layers[-1].op == "SOFTMAX" and layers[1].op == "CONV_2D" and "stem" in layers[1].tensor
    stem_float = litert.quantize_int8(saved_model, calibration, float_ops=["SOFTMAX"], float_nodes=[layers[1].tensor])
    convs = [dtype for name, dtype in _op_output_dtypes(stem_float) if name == "CONV_2D"]
    assert convs[0] == np.float32 and set(convs[1:]) == {np.int8}


def _wrong_saved_model(path: Path) -> Path:
    """Same signature as the real model (uint8 images in, 1000 probabilities out), random
    weights: it converts, loads and runs, and its answers are wrong."""
    import tensorflow as tf

    class Wrong(tf.Module):
        def __init__(self) -> None:
            self.weights = tf.Variable(tf.random.stateless_normal([3, 1000], seed=[0, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            colour = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2]) / 255.0
            return {"probabilities": tf.nn.softmax(colour @ self.weights)}

    module = Wrong()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_a_deliberately_broken_build_fails_verification_and_is_not_published(
    model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_convert = litert.convert
    wrong = _wrong_saved_model(tmp_path / "wrong_saved_model")
    monkeypatch.setattr(litert, "convert", lambda saved_model, precision, calibration=None: real_convert(wrong, "fp32"))
    output = tmp_path / "repo" / "efficientnet_lite0" / "2"
    with pytest.raises(VerificationFailed) as failed:
        build(BuildRequest(model_repository / "efficientnet_lite0" / "1", "litert", "fp32", output, eval_count=60))
    assert failed.value.verification.decided_top1_agreement < 0.5
    assert "top-1 agreement" in str(failed.value) and "top 5" in str(failed.value)
    assert not output.exists()
    assert list(output.parent.iterdir()) == []  # no staging left behind either


def test_verification_figures() -> None:
    source = np.array([[0.7, 0.2, 0.1, 0, 0, 0], [0.1, 0.6, 0.3, 0, 0, 0], [0.3, 0.28, 0.2, 0.1, 0.07, 0.05]])
    built = np.array([[0.6, 0.3, 0.1, 0, 0, 0], [0.1, 0.3, 0.6, 0, 0, 0], [0.28, 0.3, 0.2, 0.1, 0.07, 0.05]])
    figures = compare(source, built)
    assert figures["top1_agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert figures["decided_images"] == 2 and figures["decided_top1_agreement"] == 0.5  # the third is a near tie
    assert figures["top1_in_source_top5"] == 1.0
    assert figures["max_abs_prob_diff"] == pytest.approx(0.3)
    assert compare(source, built, decided_probability=0.0)["decided_images"] == 3


def _figures(
    decided: int,
    decided_flips: int,
    undecided: int,
    undecided_flips: int,
    far_flips: int = 0,
    decided_probability: float = 0.5,
) -> dict[str, float]:
    """Source/built probabilities over 10 classes: decided images (top class 0.8), near ties (0.2
    against 0.19), flips to the runner-up, and flips to a class outside the source's top 5."""
    decided_row, tie_row = np.full(10, 0.2 / 9), np.array([0.2, 0.19, 0.18, 0.15, 0.1, 0.08, 0.05, 0.03, 0.01, 0.01])
    decided_row[0] = 0.8
    source = np.array([decided_row] * decided + [tie_row] * undecided)
    built = source.copy()
    for i in [*range(decided_flips), *range(decided, decided + undecided_flips)]:
        built[i, [0, 1]] = built[i, [1, 0]]
    for i in range(decided + undecided_flips, decided + undecided_flips + far_flips):
        built[i, [0, 9]] = built[i, [9, 0]]
    return compare(source, built, decided_probability)


def test_near_ties_may_flip_but_decided_answers_may_not() -> None:
    gate = Gate.for_precision("int8")
    assert gate.failures(_figures(decided=100, decided_flips=0, undecided=50, undecided_flips=20)) == []
    (failure,) = gate.failures(_figures(decided=100, decided_flips=2, undecided=50, undecided_flips=0))
    assert "top-1 agreement 0.98" in failure


def test_a_wrong_answer_on_a_near_tie_fails_the_gate() -> None:
    (failure,) = Gate.for_precision("int8").failures(_figures(100, 0, 50, 0, far_flips=3))
    assert "top 5" in failure


def test_too_few_decided_images_fail_rather_than_pass_on_no_evidence() -> None:
    (failure,) = Gate.for_precision("int8").failures(
        _figures(decided=5, decided_flips=0, undecided=100, undecided_flips=0)
    )
    assert "decides only 5" in failure


def test_a_strict_gate_counts_every_image() -> None:
    strict = Gate.for_precision("int8", decided_probability=0.0)
    figures = _figures(100, 0, 50, 20, decided_probability=strict.decided_probability)
    (failure,) = strict.failures(figures)
    assert "top-1 agreement 0.8667 on the 150 images" in failure


def test_evaluation_images_are_real_photos_then_seeded_variations() -> None:
    first = evaluation_tensors(PREPROCESSING, 12, seed=0)
    again = evaluation_tensors(PREPROCESSING, 12, seed=0)
    other = evaluation_tensors(PREPROCESSING, 12, seed=1)
    assert first.shape == (12, 224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[:7], other[:7])  # the 7 photos themselves
    assert not np.array_equal(first[7:], other[7:])  # their variations depend on the seed


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target": "onnx", "precision": "fp32"}, ValueError),
        ({"target": "tftrt", "precision": "dynamic"}, ValueError),
        ({"target": "litert", "precision": "int4"}, ValueError),
    ],
)
def test_build_requests_are_checked_before_any_work(tmp_path: Path, kwargs: dict[str, str], error: type) -> None:
    with pytest.raises(error):
        BuildRequest(source=SOURCE, output=tmp_path / "m" / "2", **kwargs)  # type: ignore[arg-type]


def test_an_existing_or_unnumbered_output_is_refused(model_repository: Path, tmp_path: Path) -> None:
    source = model_repository / "efficientnet_lite0" / "1"
    with pytest.raises(FileExistsError):
        BuildRequest(source, "litert", "fp32", source)
    with pytest.raises(ValueError, match="version folder"):
        BuildRequest(source, "litert", "fp32", tmp_path / "latest")


def test_engine_sizes_are_the_batchers_buckets() -> None:
    assert tftrt.engine_batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert tftrt.engine_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert tftrt.engine_batch_sizes(1) == [1]


def test_calibration_input_yields_batches_of_real_images() -> None:
    images = evaluation_tensors(PREPROCESSING, 20, seed=1)
    batches = list(tftrt.calibration_batches(images, 8)())
    assert [b[0].shape for b in batches] == [(8, 224, 224, 3)] * 2
    with pytest.raises(ValueError):
        tftrt.calibration_batches(images[:4], 8)


def _has_tensorrt() -> bool:
    import tensorflow as tf

    return bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))


@pytest.mark.skipif(_has_tensorrt(), reason="this TensorFlow has TensorRT")
def test_tftrt_fails_fast_and_says_where_it_runs(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = str(model_repository / "efficientnet_lite0" / "1")
    output = tmp_path / "efficientnet_lite0" / "2"
    code = imgserve(["build", source, "--target", "tftrt", "--precision", "fp16", "--output", str(output)])
    message = capsys.readouterr().err
    assert code == 2
    assert "without TensorRT" in message and "Dockerfile.gpu" in message
    assert not output.exists()


@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorFlow built with TensorRT (Dockerfile.gpu)")
def test_tftrt_fp16_conversion(model_repository: Path, tmp_path: Path) -> None:
    output = tmp_path / "efficientnet_lite0" / "2"
    manifest = build(
        BuildRequest(model_repository / "efficientnet_lite0" / "1", "tftrt", "fp16", output, eval_count=40)
    )
    assert manifest["build"]["verification"]["passed"]
