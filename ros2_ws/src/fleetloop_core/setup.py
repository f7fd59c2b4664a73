"""ament_python package fleetloop_core (also pip-installable, editable in the dev venv)."""

from setuptools import find_packages, setup

PACKAGE = "fleetloop_core"

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
    description="FleetLoop core: edge inference, uncertainty, selection, queue, stores (no rclpy).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": ["fleetloop = fleetloop_core.cli:main"],
        "fleetloop.commands": [
            "queue = fleetloop_core.commands.queue:register",
            "replay = fleetloop_core.commands.replay:register",
        ],
    },
)
