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
        for p in _python_files("ros2_ws", "src", "fleetloop_core")
        + _python_files("cloud")
        + _python_files("sim")
        + _python_files("toolchain")
        if {"rclpy", "rosidl_runtime_py", "launch", "launch_ros"} & _imports(p)
    ]
    assert offenders == []


def test_core_never_imports_ros_cloud_or_simulation_packages():
    offenders = [
        str(p)
        for p in _python_files("ros2_ws", "src", "fleetloop_core")
        if {"fleetloop_ros", "fleetloop_cloud", "fleetloop_sim"} & _imports(p)
    ]
    assert offenders == []


def _full_imports(path: Path) -> set[str]:
    """Return every absolute module an import statement in ``path`` names (``a.b.c`` also as ``a.b``, ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            parts = module.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def robot_runtime_modules() -> list[Path]:
    """Return the robot runtime's modules: the files mypy.ini type-checks (one list for both rules)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "mypy.ini")
    return [ROOT / line.strip().rstrip(",") for line in config["mypy"]["files"].splitlines() if line.strip()]


# what a robot never needs: the model toolchain, the simulated world, torch, cloud and ROS code
NOT_ON_A_ROBOT = {
    "torch",
    "torchvision",
    "fleetloop_models",
    "fleetloop_sim",
    "fleetloop_cloud",
    "fleetloop_ros",
    "rclpy",
}


def test_the_robot_runtime_imports_no_toolchain_simulation_cloud_or_ros():
    modules = robot_runtime_modules()
    assert len(modules) >= 20 and all(path.is_file() for path in modules), modules
    offenders = {
        str(path.relative_to(ROOT)): sorted(NOT_ON_A_ROBOT & _full_imports(path))
        for path in modules
        if NOT_ON_A_ROBOT & _full_imports(path)
    }
    assert offenders == {}, f"robot runtime modules importing what a robot never needs: {offenders}"


def test_the_rule_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def later():\n    from fleetloop_sim import sim\n    import torch.nn\n")
    assert {"fleetloop_sim", "fleetloop_sim.sim", "torch"} <= _full_imports(sample)


# package -> the packages of ours it may import (ARCHITECTURE: dependencies point one way)
MAY_IMPORT = {
    "fleetloop_core": set(),
    "fleetloop_sim": {"fleetloop_core"},
    "fleetloop_models": {"fleetloop_core", "fleetloop_sim"},  # reference builds train on the simulated world
    # the camera replay renders the simulated world for bring-ups without a camera (imported on that path only)
    "fleetloop_ros": {"fleetloop_core", "fleetloop_sim", "fleetloop_interfaces"},
    "fleetloop_cloud": {"fleetloop_core", "fleetloop_models", "fleetloop_sim"},
}
PACKAGE_DIRS = {
    "fleetloop_core": ("ros2_ws", "src", "fleetloop_core", "fleetloop_core"),
    "fleetloop_sim": ("sim", "fleetloop_sim"),
    "fleetloop_models": ("toolchain", "fleetloop_models"),
    "fleetloop_ros": ("ros2_ws", "src", "fleetloop_ros", "fleetloop_ros"),
    "fleetloop_cloud": ("cloud", "fleetloop_cloud"),
}


def test_every_package_imports_only_the_packages_below_it():
    offenders = {}
    for package, parts in PACKAGE_DIRS.items():
        allowed = MAY_IMPORT[package] | {package}
        for path in _python_files(*parts):
            ours = {name for name in _imports(path) if name.startswith("fleetloop_")}
            if ours - allowed:
                offenders[str(path.relative_to(ROOT))] = sorted(ours - allowed)
    assert offenders == {}, f"imports against the dependency rule: {offenders}"


def test_core_and_the_simulated_world_never_import_torch():
    offenders = [
        str(p)
        for p in _python_files(*PACKAGE_DIRS["fleetloop_core"]) + _python_files(*PACKAGE_DIRS["fleetloop_sim"])
        if {"torch", "torchvision"} & _imports(p)
    ]
    assert offenders == []


def test_ros_and_cloud_do_not_import_each_other():
    ros = [p for p in _python_files("ros2_ws", "src", "fleetloop_ros") if "fleetloop_cloud" in _imports(p)]
    cloud = [p for p in _python_files("cloud") if "fleetloop_ros" in _imports(p)]
    assert ros == [] and cloud == []


def test_layout_exists():
    for path in [
        "ros2_ws/src/fleetloop_core/package.xml",
        "ros2_ws/src/fleetloop_core/resource/fleetloop_core",
        "ros2_ws/src/fleetloop_ros/package.xml",
        "cloud/fleetloop_cloud/__init__.py",
        "sim/fleetloop_sim/__init__.py",
        "toolchain/fleetloop_models/__init__.py",
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
    for path in (
        _python_files("ros2_ws")
        + _python_files("cloud")
        + _python_files("sim")
        + _python_files("toolchain")
        + _python_files("benchmarks")
    ):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
