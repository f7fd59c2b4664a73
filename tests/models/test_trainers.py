"""The trainer registry: a task name picks its trainer; unknown names and layouts are clear errors."""

from pathlib import Path

import pytest

from fleetloop_core.errors import ConfigError
from fleetloop_models.modelbuild import code_fingerprint, module_file
from fleetloop_models.trainers import TRAINERS, registration, trainer_for

def test_every_registered_task_has_its_trainer_and_code():
    for task, entry in TRAINERS.items():
        assert trainer_for(task).task == task
        assert all(module_file(name).is_file() for name in entry.code), entry.code
    assert code_fingerprint("classification") != code_fingerprint("detection")


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"no trainer for task 'segmentation' \(known: classification, detection\)"):
        registration("segmentation")


def test_an_unknown_detector_layout_fails_before_anything_is_written(tmp_path):
    from fleetloop_models import zoo
    from fleetloop_models.trainers.detection import DetectorDeployable, write_detector_package

    model = DetectorDeployable(zoo.build("det-tiny", 10), 32, 32)
    with pytest.raises(ConfigError, match="unknown detector layout 'ssd'"):
        write_detector_package(model, tmp_path / "T4", "n", "v", "T4", "det-tiny", "ssd", list("abcdefghij"), {}, 0)
    assert not (tmp_path / "T4").exists()


def test_a_seeded_network_is_the_same_whatever_ran_before_it():
    import torch

    from fleetloop_models import zoo

    for arch in zoo.ARCHITECTURES:
        first = zoo.build(arch, 11, seed=3)
        torch.rand(1000)  # what an earlier build in the same process would have consumed
        second = zoo.build(arch, 11, seed=3)
        other = zoo.build(arch, 11, seed=4)
        pairs = zip(first.state_dict().values(), second.state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs), arch
        assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
