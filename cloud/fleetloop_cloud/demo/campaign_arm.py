"""The demo's campaign arm: the product's robots and cloud loop with data campaigns, beside the loop without.

In-process robots (the core objects the ROS robots run) with the loop's selection, on the same camera
streams as the loop's robots, with their own store and cloud loop whose config says
``campaigns.approve: auto``: after each round but the last, the cloud proposes a campaign from its pool
(accepted labels per class) and its last evaluation (the edge model's per-class field accuracy) and
sends it, signed, while none it sent still runs (``campaign_command.auto_campaign``, the policy an
operator runs as ``fleetloop-cloud campaign auto``). The robots apply it before the next round
streams: the demo waits for every robot's job execution to end, and reports it.

Measured per round, for this arm and the loop arm (which runs no campaign): the uploads; the share the
robots themselves labeled as the campaign's class (what the campaign asks the selectors for: the
issue's figure, round after / round before); the share of the labeled uploads accepted as that class
(what an operator sees, ``campaign measure``); the share truly of that class (truth: evaluation only);
the class's accepted labels in the pool; T4's accuracy on that class's held-out field test frames.
The ratio after / before is the issue's figure; beside it, the campaign arm's share against the loop's
in the same round (both robots' models changed between the rounds, which moves their labels too).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

APPLY_TIMEOUT_S = 120.0  # the robots' agents take a job within a poll; a busy machine is slower, not stuck


def edge_scores(directory, test_sets) -> tuple[float, list[float | None]]:
    """Return T4's accuracy over every site's field test set, and per class (None: no test frame of it)."""
    from fleetloop_core.inference import TierModel

    model = TierModel.load(directory, providers=("cpu",), warmup=0)
    predicted = np.concatenate([model.infer_batch(images).probs.argmax(axis=1) for _, images, _ in test_sets])
    labels = np.concatenate([labels for _, _, labels in test_sets])
    per_class: list[float | None] = []
    for index in range(len(model.labels)):
        mask = labels == index
        per_class.append(float((predicted[mask] == index).mean()) if mask.any() else None)
    return float((predicted == labels).mean()), per_class


def send_after_round(arm, round_number: int, things: Sequence[str]) -> dict[str, Any]:
    """Run the auto policy after ``round_number``; when it sent a campaign, wait until every robot ended its job."""
    from fleetloop_cloud.campaign_command import auto_campaign

    outcome = auto_campaign(arm.loop, arm.jobs, list(things), time.time())
    event: dict[str, Any] = {"round": round_number, **outcome}
    sent = outcome.get("sent")
    if sent is not None:
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            executions = arm.jobs.executions(sent["job_id"])
            if all(thing in executions and executions[thing].terminal for thing in things):
                break
            arm.jobs.wait_changed(0.5)
        executions = arm.jobs.executions(sent["job_id"])
        event["robots"] = {
            thing: (executions[thing].status if thing in executions else "NOT TAKEN") for thing in things
        }
    return event


def _round_figures(pool, classes: Sequence[str], target: int) -> dict[int, dict[str, Any]]:
    """Return per round the uploads, the robots' share of ``target``, the share of the labeled uploads accepted as
    it, its true share (evaluation only) and its accepted labels so far."""
    from fleetloop_cloud.campaign_command import campaign_shares

    shares = campaign_shares(pool, classes[target], "class", classes)
    truths: dict[int, list[int | None]] = {}
    for row in pool.frames(include_duplicates=True):
        truths.setdefault(int(row["round"]), []).append(row["sim_label"])
    accepted: dict[int, int] = {}
    for label in pool.labels().values():
        if label.label == target:
            accepted[label.round] = accepted.get(label.round, 0) + 1
    out = {}
    for number, entry in shares.items():
        uploads = truths[number]
        out[number] = {
            "uploads": entry["uploads"],
            "robot_share": entry["share"],
            "labeled_share": entry["labeled_share"],
            "true_share": round(sum(1 for t in uploads if t == target) / len(uploads), 4),
            "accepted_labels": sum(n for r, n in accepted.items() if r <= number),
        }
    return out


def _ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 2) if after is not None and before else None


def measure(arms: dict, events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the report's ``campaign`` section: what was sent, and per round the two arms side by side."""
    arm = arms.get("campaign")
    if arm is None:
        return None
    sent = next((e["sent"] for e in events if "sent" in e), None)
    section: dict[str, Any] = {"events": events, "target": None, "rounds": [], "share_ratio": None}
    if sent is None:
        return section
    classes = list(arm.loop.task.frame_labels)
    target = classes.index(sent["target"])
    section.update(target=sent["target"], reason=sent["reason"], sent_after_round=sent["round"])
    figures = {name: _round_figures(arms[name].loop.pool, classes, target) for name in ("loop", "campaign")}
    for number in range(1, len(arm.rounds) + 1):
        entry: dict[str, Any] = {"round": number, "campaign_running": number > int(sent["round"])}
        for name in ("loop", "campaign"):
            per_class = arms[name].class_accuracy[number] if number < len(arms[name].class_accuracy) else None
            entry[name] = {
                **figures[name].get(number, {"uploads": 0}),
                "field_accuracy": per_class[target] if per_class else None,
            }
        section["rounds"].append(entry)
    before = figures["campaign"].get(int(sent["round"]), {})
    after = figures["campaign"].get(int(sent["round"]) + 1, {})
    if before and after:
        section["share_after"], section["share_before"] = after["robot_share"], before["robot_share"]
        section["share_ratio"] = _ratio(after["robot_share"], before["robot_share"])
        # the same round without a campaign: the robots' new models move the share too
        beside = figures["loop"].get(int(sent["round"]) + 1, {}).get("robot_share")
        section["share_vs_loop"] = _ratio(after["robot_share"], beside)
        # what the uploads turned out to be: accepted labels (what an operator sees), truth (evaluation only);
        # against the loop's in the same round, what the campaign brought beyond the round's other changes
        section["labeled_share_ratio"] = _ratio(after["labeled_share"], before["labeled_share"])
        section["true_share_ratio"] = _ratio(after["true_share"], before["true_share"])
        same_round = figures["loop"].get(int(sent["round"]) + 1, {})
        section["labeled_share_vs_loop"] = _ratio(after["labeled_share"], same_round.get("labeled_share"))
    return section
