"""The container images, read as text: no container engine runs on these machines (and a build would
need the network for its base images), so what each image must contain is asserted here.

What cannot be checked without building: that the base images still exist and the wheels install.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _text(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def _runs(text: str) -> str:
    """Return every RUN instruction joined (continuations folded, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\\\n", " ", "\n".join(lines))


def test_robot_image_can_build_the_interface_package_and_load_tensorrt():
    runs = _runs(_text("robot.Dockerfile"))
    for package in ("build-essential", "cmake", "python3-dev", "ros-${ROS_DISTRO}-rosidl-default-generators"):
        assert package in runs, package
    # the TensorRT libraries of the wheel on the loader path, checked at build time
    assert "tensorrt_libs" in runs and "/etc/ld.so.conf.d/" in runs and "ldconfig" in runs
    assert "CDLL('libnvinfer.so.10')" in runs
    assert '"numpy<2"' in runs


def test_jetson_image_pins_numpy_below_2_like_the_robot_image():
    runs = _runs(_text("jetson.Dockerfile"))
    installs = [line for line in runs.splitlines() if "pip3 install" in line]
    assert installs and all('"numpy<2"' in line for line in installs)


def test_no_image_overrides_the_dds_transport_of_the_config():
    for name in ("robot.Dockerfile", "jetson.Dockerfile"):
        assert "FASTDDS_BUILTIN_TRANSPORTS" not in _runs(_text(name)), name


def test_training_image_installs_only_the_training_requirements():
    text = _text("training.Dockerfile")
    runs = _runs(text)
    assert "requirements/training.txt" in text and "requirements/robot.txt" not in text
    assert "sagemaker-training" not in runs  # the entry point reads /opt/ml itself
    assert "COPY config" not in text
    entry = (ROOT / "docker" / "sagemaker-entrypoint.sh").read_text()
    assert "python -m fleetloop_cloud.train" in entry
