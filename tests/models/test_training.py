"""Training utilities: fit (labels, soft targets, tiny sets), predict, and the ONNX export matching torch."""

import numpy as np
import pytest

from fleetloop_models import zoo
from fleetloop_sim import sim
from fleetloop_models.trainers import classification as training


@pytest.fixture(scope="module")
def frames(pool):
    data = sim.render_set(sim.LAB_SITE, pool.lab_train, 96, seed="training-test", sites=sim.lab_sites())
    return data.images, data.labels


def _model():
    return training.Deployable(zoo.build("edge-tiny", 11))


def test_fit_lowers_the_loss_and_reports(frames):
    images, labels = frames
    model = _model()
    report = training.fit(
        model, images, labels, config=training.FitConfig(epochs=6, batch_size=16, lr=0.01), progress=False
    )
    assert report.samples == len(images) and report.epochs == 6 and len(report.losses) == 6
    assert report.losses[-1] < report.losses[0]


@pytest.mark.parametrize("count", [1, 3, 7])
def test_tiny_sets_train_without_a_schedule_error(frames, count):
    images, labels = frames
    report = training.fit(
        _model(), images[:count], labels[:count], config=training.FitConfig(epochs=1, batch_size=64), progress=False
    )
    assert np.isfinite(report.final_loss)


def test_distillation_from_soft_targets_and_unlabelled_frames(frames):
    images, labels = frames
    teacher = _model()
    training.fit(teacher, images, labels, config=training.FitConfig(epochs=3, batch_size=16), progress=False)
    soft, _ = training.predict(teacher, images)
    student = _model()
    unlabelled = np.full(len(labels), -1)
    report = training.fit(
        student,
        images,
        unlabelled,
        soft_targets=soft,
        config=training.FitConfig(epochs=4, batch_size=16),
        progress=False,
    )
    assert report.losses[-1] < report.losses[0]
    with pytest.raises(ValueError, match="labels, soft targets"):
        training.fit(student, images)
    with pytest.raises(ValueError, match="empty"):
        training.fit(student, images[:0], labels[:0])


def test_export_matches_torch(frames, tmp_path):
    import onnxruntime as ort

    images, labels = frames
    model = _model()
    training.fit(model, images, labels, config=training.FitConfig(epochs=1, batch_size=32), progress=False)
    path = training.export_onnx(model, tmp_path / "m.onnx", 128, 128)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, embedding, uncertainty = session.run(None, {"image": images[:5]})
    torch_probs, torch_embedding = training.predict(model, images[:5])
    assert np.allclose(probs, torch_probs, atol=1e-4)
    assert np.allclose(embedding, torch_embedding, atol=1e-4)
    assert uncertainty.shape == (5, 3)
