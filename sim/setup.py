"""fleetloop_sim: the simulated world the demo, the tests and the benchmarks run on (never on a robot)."""

from setuptools import find_packages, setup

setup(
    name="fleetloop_sim",
    version="0.1.0",
    packages=find_packages(include=["fleetloop_sim", "fleetloop_sim.*"]),
    python_requires=">=3.10",
    description="FleetLoop simulated world: sites, items, frames, truth; simulated robots; the fault harness.",
    license="Apache-2.0",
    entry_points={
        "fleetloop.commands": [
            "robot-sim = fleetloop_sim.commands.robot_sim:register",
        ]
    },
)
