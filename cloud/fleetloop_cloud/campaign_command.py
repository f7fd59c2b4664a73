"""``fleetloop-cloud campaign propose|send|measure``: an operator's data campaigns (``fleetloop_cloud.campaigns``).

* ``propose``: from the pool's accepted labels (those of the robots' random sample give each class's and
  site's prevalence), the production edge model's per-class and per-site field accuracy of the latest
  evaluation and the teachers' agreement on the latest round's uploads, the neediest class, site or
  disputed class and its campaign; kept in the pool (``campaign_proposal``) and printed for the operator;
* ``send``: the operator's approval: the kept proposal, signed with ``registry.signing_key``, as a job to
  the robots through the deploy backend (a site campaign: those of them seen at the site); recorded in
  the pool (``campaigns_sent``);
* ``auto``: the policy in config (``campaigns.approve: auto``), run after a round: propose, and send
  unless a campaign it sent still runs;
* ``measure``: per round, the share of uploads the robots labeled as a campaign's class and the share of
  the labeled ones accepted as it (``--site``: the share from the campaign's site).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.campaigns import (
    Campaign,
    CampaignConfig,
    class_needs,
    disagreement_needs,
    propose,
    shares,
    site_needs,
    upload_share,
)

PROPOSAL_KEY, SENT_KEY = "campaign_proposal", "campaigns_sent"


def production_scores(pool, figure: str = "per_class") -> dict[str, float]:
    """Return the edge model's (T4's) field accuracy per class (``figure="per_site"``: per site) after the
    latest evaluation's decision."""
    evaluated = pool.last_done("evaluate")
    if evaluated is None:
        return {}
    result = pool.step(evaluated, "evaluate")[1].get("tiers", {}).get("T4", {})
    serving = result.get("after") if (result.get("decision") or {}).get("promote") else result.get("before")
    return {name: float(entry["accuracy"]) for name, entry in ((serving or {}).get(figure) or {}).items()}


def robot_label(row) -> str:
    """Return the class the robot's own model gave an uploaded frame (its sidecar's prediction; "" if none)."""
    sidecar = json.loads(row["sidecar"] or "{}")
    labels, index = sidecar.get("labels") or [], int(sidecar.get("prediction", -1))
    return labels[index] if 0 <= index < len(labels) else ""


def campaign_shares(pool, target: str, kind: str = "class", classes: Sequence[str] = ()) -> dict[int, dict[str, float]]:
    """Return per round the uploads and the share matching a campaign: the robots themselves labeled them
    ``target`` (``kind`` class or disagreement), or they came from site ``target`` (``kind`` site).

    For a class, with the loop's ``classes``, also what the uploads turned out to be: ``labeled`` (uploads with an
    accepted label so far) and ``labeled_share`` (of those, the share accepted as ``target``): a robot's model
    that seldom names the class moves the first share little where the campaign still brings the class.
    """
    by_round: dict[int, list[str]] = {}
    accepted: dict[int, list[str]] = {}
    by_label = bool(classes) and kind == "class"
    labels = pool.labels() if by_label else {}
    for row in pool.frames(include_duplicates=True):
        by_round.setdefault(int(row["round"]), []).append(row["site"] if kind == "site" else robot_label(row))
        label = labels.get(row["id"])
        if label is not None and 0 <= int(label.label) < len(classes):
            accepted.setdefault(int(row["round"]), []).append(classes[int(label.label)])
    out: dict[int, dict[str, float]] = {}
    for number, values in sorted(by_round.items()):
        out[number] = {"uploads": len(values), "share": round(upload_share(values, target), 4)}
        if by_label:  # (no label yet: labeled 0, share 0)
            named = accepted.get(number, [])
            out[number].update(labeled=len(named), labeled_share=round(upload_share(named, target), 4))
    return out


def _loop(args: argparse.Namespace):
    from fleetloop_cloud.config import load_cloud_config
    from fleetloop_cloud.loop import CloudLoop

    loop = CloudLoop(load_cloud_config(args.config), progress=False)
    if loop.task.name != "classification":
        loop.close()
        raise ConfigError(f"{args.config}: campaigns are proposed for classifiers (this loop's task: {loop.task.name})")
    return loop


def propose_campaign(loop, now: float, config: CampaignConfig | None = None) -> dict[str, Any]:
    """Return (and keep in the pool) the neediest campaign proposal: ``{"needs", "campaign"}``."""
    config = config or loop.config.campaigns
    classes = loop.task.frame_labels
    labels, rows = loop.pool.labels(), loop.pool.frames()
    counts = Counter(classes[label.label] for label in labels.values())
    sampled = [classes[labels[row["id"]].label] for row in rows if row["random"] and row["id"] in labels]
    prevalence = shares(classes, sampled)
    latest = max((int(row["round"]) for row in rows), default=None)
    uploaded = shares(classes, [robot_label(row) for row in rows if int(row["round"]) == latest], smoothing=0.0)
    scores = production_scores(loop.pool)
    needs = class_needs(classes, counts, scores, config.skip, prevalence, uploaded) if "class" in config.kinds else []
    if "site" in config.kinds:
        robots: dict[str, set[str]] = {}
        for row in rows:
            robots.setdefault(row["site"], set()).add(row["robot_id"])
        site_labels = Counter(row["site"] for row in rows if row["id"] in labels)
        site_shares = shares(sorted(robots), [row["site"] for row in rows if row["random"]])
        site_robots = {site: sorted(names) for site, names in robots.items()}
        needs += site_needs(production_scores(loop.pool, "per_site"), site_labels, site_robots, site_shares)
    if "disagreement" in config.kinds:  # reads the last round's teacher predictions: only when asked for
        agreement = teacher_agreement(loop, rows)
        needs += disagreement_needs(agreement, counts, scores, config.min_frames, config.skip, prevalence, uploaded)
    version = str(len(loop.pool.get(SENT_KEY, []) or []) + 1)
    campaign = propose(needs, config, version, now)
    proposal: dict[str, Any] = {"needs": [n.to_dict() for n in sorted(needs, key=lambda n: -n.need)[:5]]}
    proposal["campaign"] = None if campaign is None else campaign.__dict__
    loop.pool.put(PROPOSAL_KEY, proposal)
    return proposal


def teacher_agreement(loop, rows) -> dict[str, tuple[float, int]]:
    """Return per class as T1 labels the latest teacher-labeled round's uploads: (share T2 agrees on, uploads)."""
    labeled = loop.pool.last_done("autolabel")
    if labeled is None:
        return {}
    tier_a, version_a, tier_b, version_b = loop.teacher_versions(labeled)
    ids = [row["id"] for row in rows if int(row["round"]) == labeled]
    missing = set(loop.pool.missing_predictions(tier_a, version_a, ids))
    missing |= set(loop.pool.missing_predictions(tier_b, version_b, ids))
    ids = [i for i in ids if i not in missing]
    if not ids:
        return {}
    label_a = loop.pool.predictions(tier_a, version_a, ids)[0].argmax(axis=1)
    label_b = loop.pool.predictions(tier_b, version_b, ids)[0].argmax(axis=1)
    out = {}
    for index in sorted(set(label_a.tolist())):
        mask = label_a == index
        out[loop.task.frame_labels[index]] = (float((label_b[mask] == index).mean()), int(mask.sum()))
    return out


def send_campaign(loop, jobs, things: list[str]) -> dict[str, Any]:
    """Sign the kept proposal with ``registry.signing_key`` and send it to ``things`` as a job; return the record."""
    proposal = (loop.pool.get(PROPOSAL_KEY, {}) or {}).get("campaign")
    if proposal is None:
        raise ConfigError("no campaign proposed: run 'fleetloop-cloud campaign propose' first")
    key = loop.config.registry.signing_key
    if not key:
        raise ConfigError("registry.signing_key is unset: campaigns are signed with it")
    campaign = Campaign(**proposal)
    if campaign.kind == "site":  # the site's robots only
        things = [thing for thing in things if thing in set(campaign.robots)]
        if not things:
            raise ConfigError(f"campaign {campaign.name}: none of the robots named is at {campaign.target}")
    job_id = f"campaign-{campaign.name}-{campaign.version}"
    jobs.create_job(job_id, things, campaign.document(Path(key).read_bytes()))
    # the round whose uploads and evaluation it was proposed from: the latest one
    record = {"job_id": job_id, "things": things, "round": loop.pool.last_round(), **proposal}
    loop.pool.put(SENT_KEY, list(loop.pool.get(SENT_KEY, []) or []) + [record])
    return record


def running_campaign(loop, now: float) -> dict[str, Any] | None:
    """Return the latest campaign this cloud sent that has not expired yet, or None."""
    sent = loop.pool.get(SENT_KEY, []) or []
    return sent[-1] if sent and float(sent[-1]["expires_at"]) > now else None


def auto_campaign(loop, jobs, things: list[str], now: float) -> dict[str, Any]:
    """``approve: auto``, after a round: propose, and send when no campaign sent is still running.

    Returns ``{"sent": record}`` or ``{"skipped": why}``.
    """
    if loop.config.campaigns.approve != "auto":
        return {"skipped": "campaigns.approve is manual: an operator sends proposals"}
    running = running_campaign(loop, now)
    if running is not None:
        return {"skipped": f"campaign {running['name']} v{running['version']} runs until {running['expires_at']:.0f}"}
    proposal = propose_campaign(loop, now)
    campaign = proposal["campaign"]
    if campaign is None:
        return {"skipped": "nothing needs a campaign (campaigns.min_need)", "needs": proposal["needs"]}
    if campaign["kind"] == "site" and not set(things) & set(campaign["robots"]):
        return {"skipped": f"campaign {campaign['name']}: none of the robots named is at {campaign['target']}"}
    return {"sent": send_campaign(loop, jobs, things)}


def _jobs(args: argparse.Namespace):
    from fleetloop_cloud.deploy import load_deploy_config, open_fleet_jobs

    return open_fleet_jobs(args.backend or load_deploy_config(args.deploy_config).backend)


def _things(args: argparse.Namespace) -> list[str]:
    return [t.strip() for t in args.things.split(",") if t.strip()]


def _propose(args: argparse.Namespace) -> int:
    with _loop(args) as loop:
        config = loop.config.campaigns
        if args.expires_s is not None:
            config = config.model_copy(update={"expires_s": args.expires_s})
        proposal = propose_campaign(loop, time.time(), config)
    print(json.dumps(proposal, indent=2))
    return 0


def _send(args: argparse.Namespace) -> int:
    with _loop(args) as loop:
        jobs = _jobs(args)
        try:
            record = send_campaign(loop, jobs, _things(args))
        finally:
            jobs.close()
    print(
        json.dumps(
            {k: record[k] for k in ("job_id", "things")} | {"campaign": record["name"], "version": record["version"]}
        )
    )
    return 0


def _auto(args: argparse.Namespace) -> int:
    with _loop(args) as loop:
        jobs = _jobs(args)
        try:
            outcome = auto_campaign(loop, jobs, _things(args), time.time())
        finally:
            jobs.close()
    print(json.dumps(outcome, indent=2))
    return 0


def _measure(args: argparse.Namespace) -> int:
    with _loop(args) as loop:
        kind, target = ("site", args.site) if args.site else ("class", args.target)
        if kind == "class" and target not in loop.task.frame_labels:
            known = ", ".join(loop.task.frame_labels)
            raise ConfigError(f"campaign measure --class {target!r}: not a class of this loop (known: {known})")
        rounds = campaign_shares(loop.pool, target, kind, loop.task.frame_labels)
        print(json.dumps({kind: target, "rounds": rounds}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop-cloud campaign propose|send|measure``."""
    parser = subparsers.add_parser("campaign", help="data campaigns: propose one, send it to the fleet, measure it")
    actions = parser.add_subparsers(dest="campaign_command", metavar="ACTION")
    for name, handler, text in (
        ("propose", _propose, "the neediest class's campaign from the pool and the last evaluation"),
        ("send", _send, "sign the proposed campaign and send it to robots as a job (the operator's approval)"),
        ("auto", _auto, "after a round, with campaigns.approve: auto: propose and send unless one still runs"),
        (
            "measure",
            _measure,
            "per round, the share of uploads the robots labeled as a class (and accepted as it), or from a site",
        ),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", default=None, help="config/cloud.yaml")
        action.set_defaults(handler=handler)
        if name == "propose":
            action.add_argument("--expires-s", type=float, default=None, help="default: campaigns.expires_s")
        if name in ("send", "auto"):
            action.add_argument("--things", required=True, help="comma-separated robot (thing) names")
            action.add_argument("--backend", default=None, help="job backend URI (default: config/deploy.yaml)")
            action.add_argument("--deploy-config", default=None, help="config/deploy.yaml")
        if name == "measure":
            which = action.add_mutually_exclusive_group(required=True)
            which.add_argument("--class", dest="target", help="a class campaign's class (the robots' own label)")
            which.add_argument("--site", help="a site campaign's site")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
