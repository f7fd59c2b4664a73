"""A perception node whose cascade freezes on the Nth frame: for the runner's freeze watchdog test.

    python frozen_perception.py MODELS_DIR NAMESPACE AFTER_FRAMES {sleep|gil}

``sleep`` blocks in Python (the GIL is free: the watchdog thread sees the stall, publishes
diagnostics ERROR, exits 3); ``gil`` blocks inside a C call that holds the GIL (``ctypes.PyDLL``:
no Python thread runs any more; only the native timer can end the process). Everything else is
the product: PerceptionNode, the real cascade, run_nodes.
"""

import ctypes
import sys
import time

from rclpy.parameter import Parameter

from fleetloop_ros.perception import PerceptionNode
from fleetloop_ros.serving import load_cascade
from fleetloop_ros.runner import run_nodes
from fleetloop_ros.settings import PerceptionSettings


class FreezingCascade:
    """The real cascade, frozen from the ``after``-th frame on."""

    def __init__(self, cascade, after: int, how: str):
        self._cascade, self._after, self._how, self._frames = cascade, after, how, 0

    def __getattr__(self, name):
        return getattr(self._cascade, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._cascade, name, value)

    def infer(self, frame, **kwargs):
        self._frames += 1
        if self._frames >= self._after:
            print(f"freezing ({self._how}) on frame {self._frames}", file=sys.stderr, flush=True)
            if self._how == "gil":
                ctypes.PyDLL(None).sleep(3600)  # libc sleep(), called with the GIL held
            else:
                time.sleep(3600)
        return self._cascade.infer(frame, **kwargs)


def main() -> None:
    models, namespace, after, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # the node's own health settings are the watchdog's (run_nodes reads them from the first node)
    overrides = [
        Parameter("health.frame_deadline_s", value=1.0),
        Parameter("health.frozen_exit_s", value=3.0),
        Parameter("health.period_s", value=0.5),
        Parameter("models_dir", value=models),
    ]

    def nodes():
        cascade = load_cascade(PerceptionSettings(models_dir=models))
        return [
            PerceptionNode(
                namespace=namespace, parameter_overrides=overrides, cascade=FreezingCascade(cascade, after, how)
            )
        ]

    run_nodes(nodes, [], on_ready=lambda _: print("robot up", flush=True))


if __name__ == "__main__":
    main()
