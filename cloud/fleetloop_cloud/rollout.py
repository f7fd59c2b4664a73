"""Fleet rollout of a signed model package: canaries first, then the fleet, or abort and roll back.

:func:`rollout`: a canary job to ``k`` robots; wait for their reports; if more canaries failed than
allowed, cancel, send a rollback job to every canary that took the model, and stop — the package
never reaches the others. Otherwise a fleet job to the rest, watched with the same abort rule the
job carries for AWS IoT (failure percentage after a minimum of finished executions); when that
aborts, the canaries and the fleet robots that took the model are rolled back as well, so an aborted
rollout leaves the fleet on the version it had.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from fleetloop_cloud.fleet_jobs import (
    FAILED_STATUSES,
    DeployError,
    ExecutionState,
    FleetJobs,
    RolloutConfig,
    rollback_document,
)

log = logging.getLogger(__name__)


@dataclass
class PhaseReport:
    """One job of a rollout: its id, targets and how each robot ended."""

    job_id: str
    things: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def failed(self) -> list[str]:
        return [t for t, r in self.results.items() if r["status"] != "SUCCEEDED"]

    def succeeded(self) -> list[str]:
        return [t for t, r in self.results.items() if r["status"] == "SUCCEEDED"]

    def unjudged(self) -> list[str]:
        """The robots that succeeded on a watch too short to judge (``watch_judged: false``: no evidence either way)."""
        return [t for t in self.succeeded() if self.results[t]["details"].get("watch_judged") == "false"]


@dataclass
class RolloutReport:
    """What a rollout did: phases, whether it aborted and why, which canaries were rolled back."""

    model: dict[str, str]
    canary: Optional[PhaseReport] = None
    fleet: Optional[PhaseReport] = None
    rollback: Optional[PhaseReport] = None
    aborted: bool = False
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return not self.aborted and self.fleet is not None and not self.fleet.failed()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["succeeded"] = self.succeeded
        return data


def _abort_reason(job_id: str, finished: list[ExecutionState], abort: RolloutConfig) -> str:
    """Return why ``job_id`` aborts now (IoT ``abortConfig``: failure percentage reached), or ''."""
    failures = sum(1 for s in finished if s.status in FAILED_STATUSES)
    percent = 100.0 * failures / len(finished)
    if not failures or percent < abort.abort_failure_percent:
        return ""
    return (
        f"job {job_id}: {failures} of {len(finished)} finished executions failed "
        f"({percent:.0f} % >= {abort.abort_failure_percent} %)"
    )


def wait_for_reports(
    jobs: FleetJobs,
    job_id: str,
    things: Sequence[str],
    timeout_s: float,
    poll_s: float,
    abort: RolloutConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, ExecutionState], str]:
    """Wait until every thing's execution is terminal; return the states and an abort reason ('' if none).

    With ``abort`` the job is canceled as soon as its failure percentage reaches
    ``abort_failure_percent`` after ``abort_min_executed`` finished executions (IoT ``abortConfig``).
    """
    states, reason, _ = _wait(jobs, job_id, things, timeout_s, poll_s, abort, clock)
    return states, reason


def _wait(
    jobs: FleetJobs,
    job_id: str,
    things: Sequence[str],
    timeout_s: float,
    poll_s: float,
    abort: RolloutConfig | None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, ExecutionState], str, bool]:
    """:func:`wait_for_reports`, and whether the job was canceled by the abort rule (not the deadline)."""
    deadline = clock() + timeout_s
    while True:
        states = jobs.executions(job_id)
        finished = [s for t, s in states.items() if t in things and s.terminal]
        if abort is not None and len(finished) >= min(abort.abort_min_executed, len(things)):
            reason = _abort_reason(job_id, finished, abort)
            if reason:
                jobs.cancel_job(job_id, reason)
                return jobs.executions(job_id), reason, True
        if len(finished) == len(things):
            return states, "", False
        if clock() >= deadline:
            return (
                states,
                f"job {job_id}: {len(things) - len(finished)} of {len(things)} robots did not report "
                f"within {timeout_s:.0f} s",
                False,
            )
        jobs.wait_changed(min(poll_s, max(0.0, deadline - clock())))


def _results(states: dict[str, ExecutionState], things: Sequence[str], aborted: bool) -> dict[str, dict[str, Any]]:
    """Each thing's execution: its final status; one not finished is TIMED_OUT when the phase waited out its
    deadline, and after an abort what it was then (QUEUED, IN_PROGRESS: a robot already working on the job
    may still finish it, as IoT Jobs lets an in-progress execution finish after a cancel without force)."""
    out = {}
    for thing in things:
        state = states.get(thing)
        if state is not None and state.terminal:
            status = state.status
        elif aborted:
            status = f"{state.status if state is not None else 'QUEUED'} at the abort"
        else:
            status = "TIMED_OUT"
        out[thing] = {
            "status": status,
            "details": dict(state.details) if state else {},
            "reported": state.status if state else "NONE",
        }
    return out


def _run_phase(
    jobs: FleetJobs,
    phase: PhaseReport,
    kind: str,
    document: dict[str, Any],
    config: RolloutConfig,
    say: Callable[[str], None],
    thing_group: str | None = None,
) -> str:
    """Send ``phase``'s job and wait for its robots; fill in its results; return the abort reason ('' if none).

    ``kind``: canary or rollback (both wait ``canary_timeout_s``), or fleet (waits ``fleet_timeout_s``
    and aborts on the failure rate).
    """
    fleet = kind == "fleet"
    timeout_s = config.fleet_timeout_s if fleet else config.canary_timeout_s
    started = time.monotonic()
    jobs.create_job(phase.job_id, phase.things, document, config, thing_group=thing_group)
    say(f"{kind} job {phase.job_id} sent to {thing_group or ', '.join(phase.things)}")
    states, reason, aborted = _wait(
        jobs, phase.job_id, phase.things, timeout_s, config.poll_s, config if fleet else None
    )
    phase.results, phase.seconds = _results(states, phase.things, aborted), time.monotonic() - started
    return reason


def _canary_abort_reason(canary: PhaseReport, config: RolloutConfig, late: str) -> str:
    """Return why the rollout stops after ``canary`` (which canaries failed, how, and who did not report)."""
    failed = canary.failed()
    reasons = "; ".join(
        f"{t}: {canary.results[t]['status']} {canary.results[t]['details'].get('reason', '')}" for t in failed
    )
    return (
        f"canary failed ({len(failed)} of {len(canary.things)} > {config.max_canary_failures} allowed"
        f"{'; ' + late if late else ''}): {reasons}"
    )


def _abort_canaries(
    jobs: FleetJobs, report: RolloutReport, canary: PhaseReport, config: RolloutConfig, late: str, say
) -> None:
    """Abort after the canary phase: say why, cancel its job, and wait for a canary still working on it when its
    time ran out (it may finish it, and swap, after the cancel: then it is rolled back with the others)."""
    report.aborted, report.reason = True, _canary_abort_reason(canary, config, late)
    say(f"abort: {report.reason}")
    jobs.cancel_job(canary.job_id, report.reason)
    _finish_in_progress(jobs, canary, config, say)


def rollout(
    jobs: FleetJobs,
    fleet: Sequence[str],
    document: dict[str, Any],
    job_id: str,
    config: RolloutConfig | None = None,
    canaries: Sequence[str] | None = None,
    previous_version: str = "previous",
    fleet_group: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RolloutReport:
    """Deploy ``document`` to ``fleet``: canaries, then the rest; or abort and roll the canaries back.

    ``fleet_group`` (AWS IoT only) targets the fleet phase at a thing group instead of the list;
    the canaries are in it too and answer SUCCEEDED without a reload (the version already serves).
    """
    config = config or RolloutConfig()
    say = progress or (lambda message: log.info("%s", message))
    fleet = list(fleet)
    canaries = list(canaries) if canaries is not None else fleet[: config.canary_count]
    unknown = [c for c in canaries if c not in fleet]
    if unknown:
        raise DeployError(f"canaries {unknown} are not in the fleet")
    report = RolloutReport(model={k: str(v) for k, v in document.get("model", {}).items()})

    canary = report.canary = PhaseReport(f"{job_id}-canary", canaries)
    late = _run_phase(jobs, canary, "canary", document, config, say)
    if late or len(canary.failed()) > config.max_canary_failures:
        _abort_canaries(jobs, report, canary, config, late, say)
        _roll_back(jobs, report, canary.succeeded(), document, job_id, config, previous_version, say)
        return report

    unjudged = canary.unjudged()
    say(
        f"canaries succeeded: {', '.join(canaries)}"
        + (f"; unjudged (their watch saw too few frames): {', '.join(unjudged)}" if unjudged else "")
    )
    if unjudged and config.unjudged_canaries == "abort":
        report.aborted = True
        report.reason = f"canaries passed unjudged (rollout.unjudged_canaries: abort): {', '.join(unjudged)}"
        say(f"abort: {report.reason}")
        _roll_back(jobs, report, canary.succeeded(), document, job_id, config, previous_version, say)
        return report
    rest = [t for t in fleet if t not in canaries]
    report.fleet = PhaseReport(f"{job_id}-fleet", rest)
    if not rest and fleet_group is None:
        report.reason = "fleet is the canaries"
        return report
    reason = _run_phase(jobs, report.fleet, "fleet", document, config, say, thing_group=fleet_group)
    if reason:
        report.aborted, report.reason = True, reason
        say(f"abort: {reason}")
        # the canaries and the fleet robots that took the model go back too: an aborted rollout leaves the
        # fleet on one version (measured: a 2-robot demo whose fleet robot refused the model kept it on the canary)
        _finish_in_progress(jobs, report.fleet, config, say)
        took = canary.succeeded() + [t for t in report.fleet.succeeded() if t not in canaries]
        _roll_back(jobs, report, took, document, job_id, config, previous_version, say)
    return report


def _finish_in_progress(jobs: FleetJobs, phase: PhaseReport, config: RolloutConfig, say) -> None:
    """Wait for the robots of an aborted ``phase`` that were working on its job (IN_PROGRESS at the abort:
    IoT Jobs lets them finish after a cancel without force; a robot's watch may be waiting for frames) to
    end it, up to ``canary_timeout_s`` (one robot's time for a job); record how each ended (``after_abort``).
    One that took the model then is rolled back with the others instead of keeping it."""
    working = [t for t, r in phase.results.items() if r["reported"] == "IN_PROGRESS"]
    if not working:
        return
    say(f"waiting for {', '.join(working)}: working on {phase.job_id} at the abort")
    states, late = wait_for_reports(jobs, phase.job_id, working, config.canary_timeout_s, config.poll_s)
    ended = [t for t in working if t in states and states[t].terminal]
    phase.results.update({t: {**result, "after_abort": True} for t, result in _results(states, ended, False).items()})
    if late:
        say(f"after the abort: {late}")


def _roll_back(jobs, report, took, document, job_id, config, previous_version, say) -> None:
    """Send the robots that took an aborted rollout's model a rollback job (``rollback_canaries``)."""
    if took and config.rollback_canaries:
        model = document["model"]
        report.rollback = PhaseReport(f"{job_id}-rollback", took)
        back = rollback_document(model["name"], model["tier"], previous_version)
        _run_phase(jobs, report.rollback, "rollback", back, config, say)
