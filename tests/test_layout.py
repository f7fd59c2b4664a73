"""Rules of the house that code review alone would miss."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _python_files(*parts: str):
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


def test_core_and_cloud_never_import_rclpy():
    offenders = [
        str(p)
        for p in _python_files("ros2_ws", "src", "fleetloop_core") + _python_files("cloud")
        if {"rclpy", "rosidl_runtime_py", "launch", "launch_ros"} & _imports(p)
    ]
    assert offenders == []


def test_core_never_imports_ros_or_cloud_packages():
    offenders = [
        str(p)
        for p in _python_files("ros2_ws", "src", "fleetloop_core")
        if {"fleetloop_ros", "fleetloop_cloud"} & _imports(p)
    ]
    assert offenders == []


def test_layout_exists():
    for path in [
        "ros2_ws/src/fleetloop_core/package.xml",
        "ros2_ws/src/fleetloop_core/resource/fleetloop_core",
        "ros2_ws/src/fleetloop_ros/package.xml",
        "cloud/fleetloop_cloud/__init__.py",
        "launch",
        "config",
        "docker",
        "benchmarks",
        "colcon.meta",
        "README.md",
        "Makefile",
        ".ci/run",
    ]:
        assert (ROOT / path).exists(), path


def test_python_310_syntax_everywhere():
    # robots on ROS 2 Humble run Python 3.10
    for path in _python_files("ros2_ws") + _python_files("cloud") + _python_files("benchmarks"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
