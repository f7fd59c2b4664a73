"""The review step's routing, QA audit and tightening, on teacher outputs we control (no models run).

The random calibration sample happens to miss an error mode of the teachers (it is only a
sample): the threshold chosen from it lets wrong labels through, the audit of auto-accepted
labels catches it, the threshold tightens, the frames under it go back to human review, and a
second audit pass measures what is left.
"""

import numpy as np

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop

from fixtures.cloud_world import cloud_config, peaked_probs, pool_frame


def _add(loop, index: int, truth: int, predicted: int, confidence: float, random: bool, disagree: bool = False):
    record = pool_frame(index, truth, random)
    sha = record.id
    loop.pool.add_frame(record)
    other = (predicted + 1) % len(LABELS)
    loop.pool.put_predictions("T1", "a", [sha], peaked_probs(other if disagree else predicted, confidence)[None], None)
    loop.pool.put_predictions(
        "T2", "b", [sha], peaked_probs(predicted, confidence)[None], np.eye(4, dtype=np.float32)[index % 4][None]
    )


def _world(loop) -> list[str]:
    """The round-1 pool of both tests; return the frames the teachers are confidently wrong on."""
    loop.pool.open_round()
    index = 0
    # the robots' random sample: 100 confident and right (confidence 0.99 .. 0.999) in two classes (50 each:
    # each class is routed on its own evidence), 20 where the tiers disagree
    for i in range(100):
        _add(loop, index, (6, 2)[i % 2], (6, 2)[i % 2], 0.99 + 0.009 * (i / 99), random=True)
        index += 1
    for _ in range(20):
        _add(loop, index, 3, 3, 0.6, random=True, disagree=True)
        index += 1
    # the rest: 200 confident and right at 0.999, and 60 confidently WRONG at 0.992 (missed by the sample)
    for i in range(200):
        _add(loop, index, (6, 2)[i % 2], (6, 2)[i % 2], 0.999, random=False)
        index += 1
    wrong = []
    for _ in range(60):
        _add(loop, index, 4, 6, 0.992, random=False)
        wrong.append(f"{index:064x}")
        index += 1
    loop.pool.set_step(1, "ingest", "done", {"ingested": index})
    loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    return wrong


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
