"""ament_python package fleetloop_ros (also pip-installable, editable in the dev venv)."""

from setuptools import find_packages, setup

PACKAGE = "fleetloop_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="FleetLoop maintainers",
    maintainer_email="maintainers@fleetloop.dev",
    description="FleetLoop ROS 2 nodes (thin rclpy adapters over fleetloop_core).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "perception = fleetloop_ros.perception:main",
            "model_manager = fleetloop_ros.model_manager:main",
            "selector = fleetloop_ros.selector:main",
            "uploader = fleetloop_ros.uploader:main",
            "robot = fleetloop_ros.robot:main",
            "camera_replay = fleetloop_ros.camera_replay:main",
            "wait_for_subscribers = fleetloop_ros.wait_for_subscribers:main",
        ],
        "fleetloop.commands": [
            "robot = fleetloop_ros.cli:register",
            "camera = fleetloop_ros.camera_replay:register",
        ],
    },
)
