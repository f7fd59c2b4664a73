"""The cloud loop as steps: one module per step, the state machine in :mod:`.core`, task parts in :mod:`.tasks`."""

from fleetloop_cloud.loop.core import CloudLoop, RoundSummary, StepBusyError, StepOrderError, open_loop

__all__ = ["CloudLoop", "RoundSummary", "StepBusyError", "StepOrderError", "open_loop"]
