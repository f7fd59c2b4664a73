"""Step 3, review: humans where the teachers are not enough, in phases that survive a restart.

Each pass of the step submits open human tasks, collects answers, turns them into labels and,
when no human task is pending, runs the next phase (``info["phase"]``; ``audit-2`` is phase
``audit``, pass 2). :data:`PHASES` are the phases every task runs; a task part adds its own
(``review_phases``: routing and, for classifiers, track propagation):

    calibration  a random sample of the frames routing may auto-label, for humans: the unbiased validation set
                 (``calibration-2``: the rest of it, where the task's suggestions learn from a probe first)
    route        (the task's) threshold from the calibration answers; auto-accept above it
    review       the frames still unlabeled to humans (active-learning order, within budget)
    audit        a random sample of this round's automatic labels to humans
    check        the audit against the target; below it: tighten, withdraw, re-review, audit again

The step waits (status ``waiting``) while humans have open tasks; running it again goes on.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
from typing import TYPE_CHECKING, Callable


from fleetloop_cloud import active

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop

log = logging.getLogger("fleetloop_cloud")

Phase = Callable[["CloudLoop", int, dict], dict]


def unlabeled_rows(loop: "CloudLoop") -> list:
    """Return the pool rows waiting for a label (auto-labeled or in review, no accepted label)."""
    labeled = loop.task.answers.labels()
    return [r for r in loop.pool.frames(state=("auto_labeled", "in_review")) if r["id"] not in labeled]


def apply_answers(loop: "CloudLoop", round_number: int) -> None:
    """Turn finished tasks into labels: a human answer is the frame's label (audits included).

    The unapplied tasks are read inside the writer's transaction: two workers collecting at once
    (processes on one PostgreSQL pool) apply each answer once, the second finding it applied.
    """
    answers = loop.task.answers
    with loop.pool.transaction():
        finished = answers.unapplied(round_number)
        for task in finished:
            if task.status == "done":
                answers.set_label(
                    task.frame_id,
                    task.answer,
                    "human",
                    round_number,
                    reason=f"{task.purpose} task {task.id}",
                    task_id=task.id,
                )
                loop.pool.set_state([task.frame_id], "labeled")
            elif task.purpose != "audit":
                loop.pool.set_state([task.frame_id], "in_review")
        answers.mark_applied([t.id for t in finished])


def calibration_size(loop: "CloudLoop", round_number: int) -> tuple[int, str]:
    """Return how many random frames people answer this round, and why.

    The full ``calibration_sample`` unless the round's teachers are those of the latest earlier round
    and at least that many calibration answers are pooled: then the pooled evidence holds (the same
    teachers, re-scored on it) and ``calibration_refresh`` fresh frames keep it current. A changed
    teacher gets the full fresh sample its pooled evidence is re-checked on.
    """
    cfg = loop.config.review
    if cfg.calibration_refresh is None or cfg.calibration_refresh >= cfg.calibration_sample:
        return cfg.calibration_sample, "calibration_sample"
    earlier = loop.pool.last_done("autolabel", before=round_number)
    if earlier is None:
        return cfg.calibration_sample, "first round with teachers"
    now, before = (loop.pool.step(r, "autolabel")[1].get("versions") for r in (round_number, earlier))
    if now != before:
        return cfg.calibration_sample, f"teachers changed since round {earlier}: {before} -> {now}"
    pooled = len(loop.task.answers.tasks(purpose="calibration", status="done"))
    if pooled < cfg.calibration_sample:
        return cfg.calibration_sample, f"{pooled} pooled calibration answers < {cfg.calibration_sample}"
    return cfg.calibration_refresh, f"teachers unchanged since round {earlier}, {pooled} pooled answers"


def calibration_draw(loop: "CloudLoop", round_number: int, count: int) -> list[str]:
    """Return the round's calibration sample: ``count`` frames drawn uniformly from the unlabeled ones, one of
    each sampling unit (``CloudTask.sampling_units``: a classifier's tracks) before a second of any.

    Uniformly from every frame routing may auto-label, the robots' random picks no differently: the
    evidence must be a sample of the population the thresholds admit from. The robots' random picks are
    a sample of the camera stream, and the uploads routing labels are mostly frames the edge model
    doubted, on which the teachers err more at the same confidence (measured on 600 hard-mode uploads:
    at committee confidence >= 0.79 the random picks were 68 of 68 right, the other uploads 0.931).
    One frame a track: the teachers err about an item in every frame of its track, so a second frame of
    a drawn track is not a second piece of evidence, and the label a person gives it propagation gives
    for free (measured on a seed-0 demo pool: 84 of 210 calibration frames fell in a track already
    drawn). Frames of long tracks are drawn less often than their number; the frames the thresholds
    admit are judged on evidence that leans to short tracks and lone frames, the harder ones.
    """
    rows = unlabeled_rows(loop)
    rng = loop.rng(round_number, f"{loop.task.rng_prefix}calibration")
    ids = [rows[int(i)]["id"] for i in rng.permutation(len(rows))]
    # the k-th frame drawn of its unit waits until every unit has given k - 1 (the sample keeps its size)
    rank, before = [], collections.Counter()
    for unit in loop.task.sampling_units(round_number, ids):
        rank.append(before[unit])
        before[unit] += 1
    order = sorted(range(len(ids)), key=lambda i: (rank[i], i))
    return [ids[i] for i in order[: min(count, len(ids))]]


def calibration(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Send a random sample to humans; part of it held out when so configured (a sample of the uploads, so
    the held-out set measures accuracy on what robots upload, harder than their stream). Where the task's
    suggestions learn from calibration answers (``calibration_probe``), the sample's first frames go first
    and the rest, the same draw, once they are answered (``calibration-2``)."""
    rest = info.pop("calibration_rest", None)
    if rest is not None:
        loop.task.add_tasks(round_number, "calibration", list(zip(rest, loop.task.suggestions(round_number, rest))))
        info["phase"] = "route"
        return info
    size, why = calibration_size(loop, round_number)
    ids = calibration_draw(loop, round_number, size)
    count = len(ids)
    if loop.config.evaluation.test_set == "holdout":
        fraction = loop.config.evaluation.holdout_fraction
        loop.pool.set_holdout(
            [f for f in ids if int(hashlib.sha256(f.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction]
        )
    probe = loop.task.calibration_probe()
    first, rest = (ids[:probe], ids[probe:]) if 0 < probe < count else (ids, [])
    loop.task.add_tasks(round_number, "calibration", list(zip(first, loop.task.suggestions(round_number, first))))
    info.update(phase="calibration-2" if rest else "route", calibration_tasks=count, calibration_reason=why)
    if rest:
        info.update(calibration_rest=rest, calibration_probe=len(first))
    return info


def queue_review(loop: "CloudLoop", round_number: int, info: dict, key: str) -> None:
    """Send unlabeled frames to human review, in active-learning order, within the round's budget."""
    rows = unlabeled_rows(loop)
    ids = [r["id"] for r in rows]
    embeddings, uncertainty, suggestions = loop.task.review_order_inputs(round_number, rows, info)
    budget = loop.config.review.human_budget
    spent = len([t for t in loop.task.answers.tasks(round=round_number) if t.purpose in ("track", "review")])
    room = len(ids) if budget is None else max(0, budget - spent)
    order = active.select(loop.config.review.strategy, embeddings, uncertainty, room, loop.rng(round_number, key))
    chosen = [ids[i] for i in order]
    loop.task.add_tasks(round_number, "review", [(ids[i], suggestions[i]) for i in order])
    waiting = set(ids) - set(chosen)
    loop.pool.set_state(waiting, "in_review")
    info[key] = info.get(key, 0) + len(chosen)
    info["pending_review"] = len(waiting)


def review(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Send what routing left unlabeled to humans, then audit."""
    queue_review(loop, round_number, info, "review_tasks")
    info["phase"] = "audit-1"
    return info


def audit_population(loop: "CloudLoop", round_number: int) -> list[str]:
    """Return this round's automatic labels not audited yet."""
    answers = loop.task.answers
    audited = {t.frame_id for t in answers.tasks(round=round_number, purpose="audit")}
    return sorted(
        f
        for f, label in answers.labels().items()
        if label.round == round_number and label.source in loop.task.automatic_sources and f not in audited
    )


def audit(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Send a random sample of the automatic labels to humans, the label shown to check."""
    cfg = loop.config.audit
    number = int(info["phase"].split("-")[1])
    population = audit_population(loop, round_number)
    count = min(len(population), max(cfg.min_frames, math.ceil(cfg.fraction * len(population))))
    if count == 0:
        info["phase"] = "done"
        return info
    rng = loop.rng(round_number, f"{loop.task.rng_prefix}audit-{number}")
    picked = [population[i] for i in rng.permutation(len(population))[:count]]
    labels = loop.task.answers.labels(picked)
    ids = loop.task.add_tasks(round_number, "audit", [(f, loop.task.label_value(labels[f])) for f in picked])
    info.setdefault("audit_passes", []).append(
        {
            "pass": number,
            "tasks": ids,
            "sources": {str(t): labels[f].source for t, f in zip(ids, picked)},
            # what a tightened floor is compared with: a later pass pools this pass's answers above it
            "confidences": {str(t): labels[f].confidence for t, f in zip(ids, picked)},
            "population": len(population),
            "threshold": info["threshold"]["value"],
        }
    )
    info["phase"] = f"check-{number}"
    return info


def standing_audits(loop: "CloudLoop", info: dict) -> list[tuple]:
    """Return (task, source) of this round's answered audit tasks, every pass, whose label's confidence is at or
    above the floor the audit has raised for its source since (``info["audit_floors"]``): what the audit has
    seen of the labels that stand."""
    floors = info.get("audit_floors", {})
    standing = []
    for record in info.get("audit_passes", []):
        confidences = record.get("confidences", {})
        for task_id in record["tasks"]:
            task = loop.task.answers.task(task_id)
            source = record["sources"][str(task_id)]
            floor, confidence = floors.get(source), confidences.get(str(task_id))
            if task.status == "done" and (floor is None or confidence is None or confidence >= floor):
                standing.append((task, source))
    return standing


def check(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Measure the audit; below target tighten, withdraw the labels under the new floor, audit again.

    Each pass is judged on every answer the round's passes have given about labels that still stand
    (``standing_audits``), not on its own 30 alone: judged alone, a pass after a failed one is another
    chance for a lucky sample to pass (measured on 15 hard-mode draws: a pass of 25 of 30 tightened the
    threshold by one step, the next drew 30 of 30, and 434 labels truly 0.926 right were kept). A pass
    after which even a perfect remaining audit could not lift that evidence to the target is the last
    (``audit_can_pass``). A last pass below target withdraws every unaudited label of the sources that
    missed it, to people: what the audit could not pass is not shipped (measured: a hard-mode round kept
    272 auto-labels at a true accuracy of 0.945 after three passes of 28 of 30).
    """
    number = int(info["phase"].split("-")[1])
    record = info["audit_passes"][-1]
    tasks = [loop.task.answers.task(t) for t in record["tasks"]]
    done = [t for t in tasks if t.status == "done"]
    if done and loop.task.second_opinions(round_number, done):
        return info  # the same phase again once the second opinions are answered
    meets = loop.task.measure_audit(record, tasks, done, standing_audits(loop, info))
    if not done or meets:
        info["phase"] = "done"
        return info
    floors = loop.task.tighten(info, record, number)
    info.setdefault("audit_floors", {}).update(floors)
    population = audit_population(loop, round_number)
    more = (loop.config.audit.max_passes - number) * len(tasks)  # what the passes left could still audit
    last = more <= 0 or not loop.task.audit_can_pass(standing_audits(loop, info), more)
    if last:
        labels = loop.task.answers.labels(population)
        why = f"withdrawn: audit pass {number}, the last, missed the target"
        if number < loop.config.audit.max_passes:
            why = f"withdrawn: after audit pass {number} no later pass could reach the target"
            record["futile"] = True
        withdrawn = [(f, f"{labels[f].source} label {why}") for f in population if labels[f].source in floors]
    else:
        withdrawn = loop.task.below_floors(round_number, info, population, floors, number)
    with loop.pool.transaction():
        for frame_id, reason in withdrawn:
            loop.task.answers.remove_label(frame_id, round_number, reason=reason)
        loop.pool.set_state([f for f, _ in withdrawn], "in_review")
    record["withdrawn"] = len(withdrawn)
    queue_review(loop, round_number, info, "rereview_tasks")
    info["phase"] = "done" if last else f"audit-{number + 1}"
    return info


PHASES: dict[str, Phase] = {"calibration": calibration, "review": review, "audit": audit, "check": check}


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Run phases until done or until humans have tasks open; return the step's record."""
    _, info = loop.pool.step(round_number, "review")
    info = dict(info)
    phases = {**PHASES, **loop.task.review_phases}
    annotator = loop.task.annotator(round_number)
    while True:
        loop.task.dispatch(round_number, annotator)
        apply_answers(loop, round_number)
        pending = loop.task.answers.tasks(round=round_number, status=("open", "submitted"))
        if pending:
            info["waiting_tasks"] = len(pending)
            info["_status"] = "waiting"
            log.info("round %d: review waits for %d human answer(s)", round_number, len(pending))
            return info
        info.pop("waiting_tasks", None)
        phase = info.get("phase", "calibration")
        if phase == "done":
            return info
        info = phases[phase.split("-")[0]](loop, round_number, info)
        loop.pool.set_step(round_number, "review", "running", info)
