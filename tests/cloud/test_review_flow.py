"""The review step's routing, QA audit and tightening, on teacher outputs we control (no models run).

The random calibration sample happens to miss an error mode of the teachers (it is only a
sample; the world is built around the draw): the threshold chosen from it lets wrong labels
through, the audit of auto-accepted labels catches it, the threshold tightens, the frames under
it go back to human review, and a second audit pass measures what is left.
"""

import numpy as np

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop, review

from fixtures.cloud_world import cloud_config, peaked_probs, pool_frame


def _predict(loop, index: int, predicted: int, confidence: float, disagree: bool = False) -> None:
    sha = f"{index:064x}"
    other = (predicted + 1) % len(LABELS)
    loop.pool.put_predictions("T1", "a", [sha], peaked_probs(other if disagree else predicted, confidence)[None], None)
    loop.pool.put_predictions(
        "T2", "b", [sha], peaked_probs(predicted, confidence)[None], np.eye(4, dtype=np.float32)[index % 4][None]
    )


def _world(loop) -> list[str]:
    """The round-1 pool of both tests; return the frames the teachers are confidently wrong on.

    380 frames, 120 of them the calibration sample the review step draws: 100 confident and right
    (0.99 .. 0.999) in two classes (50 each: each class is routed on its own evidence) and 20 where the
    tiers disagree. Of the 260 it leaves, 200 are confident and right at 0.999 and 60 confidently WRONG
    at 0.992: the world is built around the draw so that the sample misses them, as a sample can.
    """
    loop.pool.open_round()
    count = 380
    for index in range(count):
        loop.pool.add_frame(pool_frame(index, None, random=index % 3 == 0))
    drawn = set(review.calibration_draw(loop, 1, 120))
    sample = [i for i in range(count) if f"{i:064x}" in drawn]
    rest = [i for i in range(count) if f"{i:064x}" not in drawn]
    truth = {}
    for k, index in enumerate(sample[:100]):
        truth[index] = (6, 2)[k % 2]
        _predict(loop, index, truth[index], 0.99 + 0.009 * (k / 99))
    for index in sample[100:]:
        truth[index] = 3
        _predict(loop, index, 3, 0.6, disagree=True)
    for k, index in enumerate(rest[:200]):
        truth[index] = (6, 2)[k % 2]
        _predict(loop, index, truth[index], 0.999)
    for index in rest[200:]:
        truth[index] = 4
        _predict(loop, index, 6, 0.992)
    loop.pool.set_sim_labels({f"{i:064x}": label for i, label in truth.items()})
    loop.pool.set_step(1, "ingest", "done", {"ingested": count})
    loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    return [f"{i:064x}" for i in rest[200:]]


def _config(tmp_path, cloud_models, max_passes: int) -> dict:
    return cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={
            "target_accuracy": 0.98,
            "bound_z": 1.0,
            "min_validation": 30,
            "calibration_min_labels": 100000,  # keep T = 1: confidences as written
            "propagation": {"enabled": False},
        },
        review={"calibration_sample": 120, "calibration_more": 0},
        audit={"fraction": 0.2, "min_frames": 40, "tighten_step": 0.004, "max_passes": max_passes},
        annotators={"simulated": {"error_rate": 0.0}},
    )


def test_a_last_audit_pass_below_target_sends_every_unaudited_label_of_its_source_to_people(tmp_path, cloud_models):
    with CloudLoop(cloud_config_from_dict(_config(tmp_path, cloud_models, max_passes=1)), progress=False) as loop:
        wrong = _world(loop)

        info = loop.review()

        assert info["phase"] == "done"
        (only,) = info["audit_passes"]
        assert not only["meets_target"] and only["withdrawn"] == only["population"] - only["frames"] > 0
        labels = loop.pool.labels()
        assert not [f for f, label in labels.items() if label.source == "auto"]  # nothing unaudited stays auto
        assert all(labels[f].source == "human" and labels[f].label == 4 for f in wrong)
        reason = loop.pool.label_events(wrong[0])[1]["reason"]
        assert "audit pass 1, the last, missed the target" in reason


def test_audit_below_target_tightens_the_threshold_and_sends_frames_back_to_review(tmp_path, cloud_models):
    with CloudLoop(cloud_config_from_dict(_config(tmp_path, cloud_models, max_passes=3)), progress=False) as loop:
        wrong = _world(loop)

        info = loop.review()

        assert info["phase"] == "done"
        first, *later = info["audit_passes"]
        assert first["threshold"] <= 0.992 and first["population"] == 260  # the wrong ones were accepted ...
        assert first["accuracy"] < 0.98 and not first["meets_target"]  # ... and the audit caught it
        assert first["tightened"]["auto"] > 0.992 and first["withdrawn"] > 0
        assert loop.pool.get("threshold_floor") == first["tightened"]["auto"]  # later rounds start tighter
        final = later[-1]
        assert final["meets_target"] and final["accuracy"] == 1.0 and final["frames"] >= 40
        labels = loop.pool.labels()
        # every wrong auto label was either corrected by its auditor or withdrawn and labeled by a human
        assert all(labels[f].source == "human" and labels[f].label == 4 for f in wrong)
        assert info["rereview_tasks"] > 0
        summary = loop.summary(1).to_dict()
        assert summary["audit"]["final"]["pass"] == final["pass"] and summary["audit"]["meets_target"]
        assert summary["labels"]["auto_accepted"] > 0
        # the label history shows what happened to one of the wrong frames
        events = [e["source"] for e in loop.pool.label_events(wrong[0])]
        assert events[0] == "auto" and events[-1] == "human"


def test_the_calibration_sample_is_drawn_from_every_upload_so_the_robots_random_picks_cannot_vouch_for_the_rest(
    tmp_path, cloud_models
):
    # the robots' random picks (a sample of their stream) are easy: 100 confident and right; the frames they
    # uploaded because their edge model doubted them hold an error mode at the same confidence
    config = _config(tmp_path, cloud_models, max_passes=1)
    config["review"]["calibration_sample"] = 100  # as many as the random picks: they alone would pass shirts
    with CloudLoop(cloud_config_from_dict(config), progress=False) as loop:
        loop.pool.open_round()
        truth, wrong = {}, []
        for index in range(600):
            picked_at_random = index < 100
            right = picked_at_random or index % 3 != 0
            truth[index] = (6, 2)[index % 2] if right else 4
            loop.pool.add_frame(pool_frame(index, truth[index], random=picked_at_random))
            _predict(loop, index, truth[index] if right else 6, 0.995)
            if not right:
                wrong.append(f"{index:064x}")
        loop.pool.set_step(1, "ingest", "done", {"ingested": 600})
        loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})

        info = loop.review()

        # no wrong frame was ever auto-labeled (an audit would only have caught some of them afterwards)
        assert not [f for f in wrong if any(e["source"] == "auto" for e in loop.pool.label_events(f))]
        sampled = {t.frame_id for t in loop.task.answers.tasks(purpose="calibration")}
        assert len(sampled) == 100 and 5 <= sum(f"{i:064x}" in sampled for i in range(100)) <= 30  # ~17
        shirts = info["thresholds"]["shirt"]
        assert shirts["accepted_frames"] == 0 and shirts["accuracy"] < 0.98  # the sample showed the errors


def _audited_world(tmp_path, cloud_models, max_passes: int):
    """A round-1 loop whose review page answers come from the test: 100 calibration frames right (0.99 .. 0.999,
    two classes of 50), 200 more the teachers are as sure of (0.999), all auto-accepted; audits of 20."""
    config = _config(tmp_path, cloud_models, max_passes=max_passes)
    config["review"]["annotator"] = "review-page"
    config["review"]["calibration_sample"] = 100
    config["audit"] = {"fraction": 0.0, "min_frames": 20, "tighten_step": 0.0001, "max_passes": max_passes}
    loop = CloudLoop(cloud_config_from_dict(config), progress=False)
    loop.pool.open_round()
    for index in range(300):
        loop.pool.add_frame(pool_frame(index, None, random=False))
    drawn = set(review.calibration_draw(loop, 1, 100))
    sample = [i for i in range(300) if f"{i:064x}" in drawn]
    for k, index in enumerate(sample):
        _predict(loop, index, (6, 2)[k % 2], 0.99 + 0.009 * (k / 99))
    for k, index in enumerate(i for i in range(300) if f"{i:064x}" not in drawn):
        _predict(loop, index, (6, 2)[k % 2], 0.999)
    loop.pool.set_step(1, "ingest", "done", {"ingested": 300})
    loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    return loop


def _waiting(loop) -> bool:
    return loop.pool.step(1, "review")[0] == "waiting"


def _answer(loop, wrong: int = 0) -> int:
    """Answer the open tasks as the page would: confirm each suggestion, contradict the first ``wrong``
    audited ones (a class nobody suggested); return how many tasks were answered."""
    tasks = loop.pool.tasks(round=1, status=("open", "submitted"))
    audits = [t for t in tasks if t.purpose == "audit"]
    for task in tasks:
        answer = 4 if task in audits[:wrong] else task.suggestion
        loop.pool.answer_task(task.id, answer, "person", 1.6, 0.0)
    return len(tasks)


def test_an_audit_pass_is_judged_with_the_answers_of_the_passes_before_it(tmp_path, cloud_models):
    # one error in the first 20 audited labels; the next 20 are right: alone they would pass (20 of 20), but
    # 39 of 40 is under 0.98, so a third pass is drawn, and 59 of 60 passes
    with _audited_world(tmp_path, cloud_models, max_passes=3) as loop:
        loop.review()
        assert _waiting(loop) and _answer(loop) == 100  # the calibration sample
        info = loop.review()
        assert _waiting(loop) and info["auto_accepted"] == 200 and _answer(loop, wrong=1) == 20
        info = loop.review()
        assert _waiting(loop) and _answer(loop) == 1  # the contradicted label's second opinion
        info = loop.review()
        assert info["phase"] == "check-2" and not info["audit_passes"][0]["meets_target"]
        assert _answer(loop) == 20
        info = loop.review()
        second = info["audit_passes"][1]
        assert second["accuracy"] == 1.0 and second["pooled"]["correct"] == 39 and not second["meets_target"]
        assert info["phase"] == "check-3" and _answer(loop) == 20
        info = loop.review()
        third = info["audit_passes"][2]
        assert info["phase"] == "done" and third["meets_target"] and third["pooled"]["frames"] == 60
        labels = loop.pool.labels()
        assert sum(label.source == "auto" for label in labels.values()) == 200 - 60  # the audited are people's now
        assert sum(label.label == 4 for label in labels.values()) == 1  # the wrong one as its auditors said


def test_an_audit_no_later_pass_could_pass_withdraws_every_unaudited_label_at_once(tmp_path, cloud_models):
    # 3 errors in 20: even 40 more right answers leave 57 of 60 (0.95), so the round's audit cannot pass
    with _audited_world(tmp_path, cloud_models, max_passes=3) as loop:
        loop.review()
        _answer(loop)
        loop.review()
        _answer(loop, wrong=3)
        loop.review()
        _answer(loop)  # second opinions: the contradictions stand
        info = loop.review()
        (only,) = info["audit_passes"]
        assert only["futile"] and only["withdrawn"] == 200 - 20
        labels = loop.pool.labels()
        assert not [f for f, label in labels.items() if label.source == "auto"]
        reasons = [e["reason"] for i in range(300) for e in loop.pool.label_events(f"{i:064x}")]
        assert sum("after audit pass 1 no later pass could reach the target" in r for r in reasons) == 180
        assert _waiting(loop) and _answer(loop) == 180  # they went back to people
