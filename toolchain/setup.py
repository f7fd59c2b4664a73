"""fleetloop_models: the model toolchain (torch): architectures, training, distillation, ONNX export, builds."""

from setuptools import find_packages, setup

setup(
    name="fleetloop_models",
    version="0.1.0",
    packages=find_packages(include=["fleetloop_models", "fleetloop_models.*"]),
    python_requires=">=3.10",
    description="FleetLoop model toolchain: the zoo, one fit loop, per-task trainers, the reference-model builds.",
    license="Apache-2.0",
    entry_points={
        "fleetloop.commands": [
            "models = fleetloop_models.command:register",
            # the edge pipeline over one simulated stream, on reference models it builds when missing
            "edge-demo = fleetloop_models.edge_demo:register",
        ]
    },
)
