"""Run ``python -m fleetloop_cloud.train`` as if only requirements/training.txt (+ torch) were installed.

Every third-party module whose distribution is outside that set and its dependencies is made
absent, as it is in the training image. Usage: only_training_requirements.py <train args...>
"""

import importlib.metadata as metadata
import re
import runpy
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def allowed_distributions() -> set[str]:
    wanted = ["torch"] + [
        Requirement(line.split("#")[0].strip()).name
        for line in (ROOT / "requirements" / "training.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    allowed: set[str] = set()
    while wanted:
        name = _name(wanted.pop())
        if name in allowed:
            continue
        allowed.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return allowed


def hide_others(allowed: set[str]) -> list[str]:
    """Make every top-level module of a distribution outside ``allowed`` absent, as in the image:
    ``sys.modules[name] = None`` fails ``import name`` with ModuleNotFoundError and makes
    ``importlib.util.find_spec(name)`` return None (optional imports behave as if not installed)."""
    hidden = []
    for module, owners in metadata.packages_distributions().items():
        if module.startswith("fleetloop_") or module in sys.modules:
            continue
        if not {_name(d) for d in owners} & allowed:
            sys.modules[module] = None
            hidden.append(module)
    return hidden


if __name__ == "__main__":
    hide_others(allowed_distributions())
    sys.argv = ["fleetloop_cloud.train"] + sys.argv[1:]
    runpy.run_module("fleetloop_cloud.train", run_name="__main__", alter_sys=True)
