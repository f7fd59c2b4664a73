"""A small detection round in the cloud loop: ingest -> T1/T2 boxes -> consensus routing from audited data
-> simulated box review -> audit -> train/distil detectors -> mAP gate -> register; plus the box-level
pieces it is made of (consensus, routing threshold, costs, Ground Truth bounding-box manifests)."""

import json

import numpy as np
import pytest

from fleetloop_sim import sim
from fleetloop_core.detection import DetectorModel
from fleetloop_core.errors import ConfigError
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.store import open_store

from fleetloop_cloud.box_annotators import box_task_cost, record_box_answer
from fleetloop_cloud.box_consensus import (
    BoxSet,
    BoxTargets,
    aggregate,
    choose_threshold,
    compare,
    SoloEvidence,
    consensus,
    edits,
    solo_evidence,
)
from fleetloop_cloud.routing import wilson_lower
from fleetloop_cloud.box_manifest import augmented_box_manifest, parse_box_record, read_box_channel
from fleetloop_cloud.config import cloud_config_from_dict, load_cost_model
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.loop.tasks.detection_report import box_labeling_figures, map_per_round
from fleetloop_cloud.simfleet import SimulatedFleet

from fixtures.cloud_world import ROOT, cloud_config


def _set(rows, scores=True):
    return BoxSet.from_rows(rows, with_scores=scores)


def test_consensus_fuses_agreeing_boxes_and_flags_disagreement():
    a = _set([[10, 10, 30, 30, 0.9, 1], [50, 50, 70, 70, 0.8, 2]])
    b = _set([[12, 10, 32, 30, 0.7, 1], [50, 52, 70, 72, 0.6, 2]])
    agreed = consensus(a, b)
    assert agreed.agree and agreed.matched == 2 and agreed.unmatched == 0
    np.testing.assert_allclose(agreed.fused.boxes[0], [10 + 2 * 0.7 / 1.6, 10, 30 + 2 * 0.7 / 1.6, 30], atol=1e-4)
    assert agreed.fused.scores[0] == pytest.approx(0.8) and agreed.confidence == pytest.approx(0.7)
    missing = consensus(a, b.select(0) if hasattr(b, "select") else _set([[12, 10, 32, 30, 0.7, 1]]))
    assert not missing.agree and missing.unmatched == 1 and len(missing.fused) == 2
    assert missing.fused.scores[-1] == pytest.approx(0.4)  # seen by one tier of two: half its score
    conflict = consensus(a, _set([[10, 10, 30, 30, 0.9, 3], [50, 50, 70, 70, 0.8, 2]]))
    assert not conflict.agree and conflict.class_conflicts == 1
    loose = consensus(a, _set([[16, 16, 36, 36, 0.9, 1], [56, 56, 76, 76, 0.9, 2]]), match_iou=0.3, min_iou=0.7)
    assert loose.matched == 2 and not loose.agree  # matched, but not tightly enough
    # a faint box under the threshold lowers an empty frame's confidence without entering the suggestion
    faint = consensus(_set([[0, 0, 5, 5, 0.2, 1]]), _set([]), threshold=0.3)
    assert faint.agree and len(faint.fused) == 0 and faint.confidence == pytest.approx(0.8)
    assert consensus(_set([]), _set([])).confidence == 1.0


def test_one_tier_boxes_are_weighed_by_what_people_confirmed_of_their_tier():
    a = _set([[10, 10, 30, 30, 0.9, 1]])
    b = _set([[12, 10, 32, 30, 0.7, 1], [50, 50, 70, 70, 0.8, 2]])
    plain = consensus(a, b)  # no evidence: WBF's half score, and the one-tier box vetoes agreement
    assert not plain.agree and plain.fused.scores[-1] == pytest.approx(0.4)
    # tier B's one-tier boxes are wrong by evidence: dropped, no veto, the frame a little less sure
    weighed = consensus(a, b, solo_weights=(0.8, 0.05), min_solo_weight=0.23)
    assert weighed.agree and len(weighed.fused) == 1 and weighed.unmatched == 0
    assert weighed.confidence == pytest.approx(min(0.8, 1.0 - 0.8 * 0.05))
    # the same boxes with the tiers swapped: a trusted tier's one-tier box stays at its weighted score
    trusted = consensus(b, a, solo_weights=(0.8, 0.05), min_solo_weight=0.23)
    assert not trusted.agree and trusted.unmatched == 1 and trusted.fused.scores[-1] == pytest.approx(0.64)
    # only the distrusted tier saw something: an agreed empty frame
    only = consensus(_set([]), _set([[50, 50, 70, 70, 0.9, 2]]), solo_weights=(0.8, 0.05), min_solo_weight=0.23)
    assert only.agree and len(only.fused) == 0 and only.mean_iou == 1.0 and only.confidence == pytest.approx(0.955)

    # the evidence: per tier, its one-tier boxes a human box confirms (same class); faint boxes do not count
    human = _set([[10, 10, 30, 30, 1], [90, 90, 110, 110, 3], [130, 10, 150, 30, 4]], scores=False)
    tier_a = _set([[10, 10, 30, 30, 0.9, 1], [90, 90, 110, 110, 0.6, 3], [130, 10, 150, 30, 0.6, 5]])
    tier_b = _set([[11, 10, 31, 30, 0.8, 1], [50, 50, 70, 70, 0.9, 2], [120, 120, 140, 140, 0.1, 2]])
    evidence_a, evidence_b = solo_evidence([(tier_a, tier_b, human)] * 25, match_iou=0.5, threshold=0.3)
    assert (evidence_a.right, evidence_a.total) == (25, 50)  # the wrong-class box is not confirmed
    assert (evidence_b.right, evidence_b.total) == (0, 25)
    assert evidence_a.weight(z=1.0, min_boxes=20) == pytest.approx(1.0 - wilson_lower(25, 50, 1.0))
    assert evidence_b.weight(z=1.0, min_boxes=20) == pytest.approx(1.0 - 25 / 26)  # bound of 0 of 25
    assert SoloEvidence(0, 19).weight(z=1.0, min_boxes=20) == 0.5  # too few seen: WBF's rule


def test_quality_counts_missed_and_invented_boxes_and_the_threshold_meets_both_targets():
    human = _set([[10, 10, 30, 30, 1], [50, 50, 70, 70, 2]], scores=False)
    perfect = compare(_set([[10, 10, 30, 30, 0.9, 1], [50, 50, 70, 70, 0.9, 2]]), human)
    missed = compare(_set([[10, 10, 30, 30, 0.9, 1]]), human)
    wrong = compare(_set([[10, 10, 30, 30, 0.9, 4], [50, 50, 70, 70, 0.9, 2]]), human)
    assert perfect.exact and not missed.exact and not wrong.exact
    assert aggregate([missed]).mean_iou == pytest.approx(0.5) and aggregate([missed]).matched_iou == 1.0
    assert aggregate([wrong]).class_accuracy == 0.5
    # validation frames: confident ones perfect, doubtful ones missing both boxes
    empty = compare(_set([]), human)
    assert aggregate([empty]).mean_iou == 0.0 and aggregate([empty, perfect]).mean_iou == pytest.approx(0.5)
    confidence = np.asarray([0.9] * 30 + [0.4] * 30)
    comparisons = [perfect] * 30 + [empty] * 30
    threshold = choose_threshold(confidence, comparisons, np.ones(60, bool), BoxTargets(min_accepted=20, z=0.0))
    assert threshold.value == pytest.approx(0.9) and threshold.accepted_frames == 30
    none = choose_threshold(confidence, [empty] * 60, np.ones(60, bool), BoxTargets(min_accepted=20))
    assert not none.automated and "no threshold reaches mean IoU" in none.reason
    few = choose_threshold(confidence[:5], comparisons[:5], np.ones(5, bool), BoxTargets(min_accepted=20))
    assert not few.automated and "only 5 eligible" in few.reason


def test_box_costs_price_every_edit(repo_root):
    costs = load_cost_model(repo_root / "config" / "cost_model.yaml").boxes
    suggestion = _set([[10, 10, 30, 30, 1], [50, 50, 70, 70, 2], [90, 90, 99, 99, 3]], scores=False)
    answer = _set([[10, 10, 30, 30, 1], [50, 54, 70, 78, 5], [0, 0, 8, 8, 0]], scores=False)
    change = edits(suggestion, answer)
    assert (change.kept, change.adjusted, change.deleted, change.drawn, change.reclassed) == (1, 1, 1, 1, 1)
    seconds, dollars, _ = box_task_cost(costs, suggestion, answer, shown=True)
    assert seconds == pytest.approx(
        costs.seconds_per_frame
        + costs.seconds_per_box_verify
        + costs.seconds_per_box_adjust
        + costs.seconds_per_box_delete
        + costs.seconds_per_box_draw
        + costs.seconds_per_reclass
    )
    scratch, _, _ = box_task_cost(costs, suggestion, answer, shown=False)
    assert scratch == pytest.approx(costs.manual_seconds(3))
    assert dollars == pytest.approx(costs.task_price(seconds))
    # the primary pricing: our review page's workforce by the hour, so seconds saved are dollars saved
    assert costs.hourly_rate_usd is not None
    assert dollars == pytest.approx(costs.hourly_rate_usd * seconds / 3600.0)
    figures = box_labeling_figures(
        costs, [2, 0, 3], human_seconds=10.0, human_dollars=costs.task_price(10.0), compute_dollars_=0.0, human_tasks=1
    )
    assert figures.manual_seconds == pytest.approx(sum(costs.manual_seconds(n) for n in (2, 0, 3)))
    assert figures.throughput_ratio == pytest.approx(figures.manual_seconds / 10.0)
    assert figures.cost_ratio == pytest.approx(figures.throughput_ratio)
    # Ground Truth's pricing beside it: the fee on all three frames, the worker's price on the one a person did
    fee, worker = costs.service_fee_per_object_usd, costs.worker_price_per_task_usd
    assert figures.ground_truth_loop_cost_per_frame == pytest.approx((3 * fee + worker) / 3)
    assert figures.ground_truth_cost_ratio == pytest.approx((fee + worker) / ((3 * fee + worker) / 3))
    # a suggested box is worth showing above the precision where its expected time equals leaving it out
    p = costs.break_even_precision
    shown = p * costs.seconds_per_box_verify + (1 - p) * costs.seconds_per_box_delete
    assert 0 < p < 1 and shown == pytest.approx(p * costs.seconds_per_box_draw)


def test_the_simulated_annotator_leaves_a_good_shown_box_where_it_is(tmp_path):
    import dataclasses

    from fleetloop_cloud.box_annotators import BoxAnnotatorContext, SimulatedBoxAnnotator
    from fleetloop_cloud.box_pool import BoxPool
    from fleetloop_cloud.pool import Pool

    from fixtures.cloud_world import pool_frame

    truth = [[10, 10, 40, 40, 1, 7], [60, 60, 90, 90, 2, 8]]
    pool = Pool(tmp_path / "pool.sqlite")
    frame = dataclasses.replace(pool_frame(1, 1, True), sidecar=json.dumps({"simulation": {"boxes": truth}}))
    pool.add_frame(frame)
    boxes = BoxPool(pool)
    good = _set([[11, 12, 41, 42, 0.9, 3], [60, 60, 70, 70, 0.9, 2]])  # the first close (IoU ~0.8), the second not
    shown, hidden = boxes.add_tasks(1, "review", [(frame.id, good)], shown=True) + boxes.add_tasks(
        1, "review", [(frame.id, good)], shown=False
    )
    context = BoxAnnotatorContext(pool, boxes, [str(i) for i in range(10)], 1, 0.0, 0.0, 1.0, accept_iou=0.7)
    answer, scratch = SimulatedBoxAnnotator(context).collect([boxes.task(shown), boxes.task(hidden)])
    np.testing.assert_allclose(answer.boxes.boxes[0], [11, 12, 41, 42])  # left as it was, its class the person's
    assert answer.boxes.classes.tolist() == [1, 2]
    assert not np.allclose(answer.boxes.boxes[1], [60, 60, 70, 70])  # a poor box is redrawn around the object
    change = edits(good, answer.boxes)
    assert (change.kept, change.reclassed) == (1, 1)
    assert not np.allclose(scratch.boxes.boxes[0], [11, 12, 41, 42])  # nothing shown: drawn from scratch
    pool.close()


def _config(tmp_path, store, models, **sections):
    defaults = dict(
        review={"annotator": "simulated", "calibration_sample": 40, "strategy": "uncertainty"},
        audit={"fraction": 0.2, "min_frames": 10, "max_passes": 2},
        detection={
            "annotator": "simulated",
            "min_validation": 10,
            "bound_z": 0.0,
            "simulated": {"error_rate": 0.0, "miss_rate": 0.0, "box_jitter_px": 0.5},
        },
        training={
            "teacher_epochs": 1,
            "distil_epochs": 1,
            "warm_start_epochs": 1,
            "batch_size": 16,
            "lab_replay_frames": 20,
        },
        evaluation={
            "test_set": "simulated-field",
            "frames_per_site": 20,
            "min_support": 5,
            "min_gain": -1.0,
            "max_site_regression": 1.0,
            "max_class_regression": 1.0,
        },
    )
    defaults.update(sections)
    return cloud_config_from_dict(cloud_config(tmp_path, store.uri, models, **defaults))


def _fleet(tmp_path, models, frames=60):
    store = open_store(f"file://{tmp_path / 'store'}")
    edge = DetectorModel.load(models["T4"], providers=("cpu",), warmup=0)
    sites = sim.make_fleet_sites(2, seed=0)
    fleet = SimulatedFleet(
        store, [("robot-0", sites[0]), ("robot-1", sites[1])], seed=0, edge_model=edge, task="detection"
    )
    return store, fleet.upload(frames)


def test_a_detection_round_end_to_end(tmp_path, detection_cloud_models):
    store, sidecars = _fleet(tmp_path, detection_cloud_models)
    assert sidecars[0].detections is not None and sidecars[0].simulation.boxes is not None
    detection = {
        "annotator": "simulated",
        "min_validation": 10,
        "bound_z": 0.0,
        "solo_min_boxes": 3,  # the small fixture's probe of 20 frames weighs the tiers
        "simulated": {"error_rate": 0.0, "miss_rate": 0.0, "box_jitter_px": 0.5},
    }
    config = _config(tmp_path, store, detection_cloud_models["T1"].parent, detection=detection)
    with CloudLoop(config, progress=False) as loop:
        summary = loop.run_round().to_dict()
        (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
        assert summary["status"] == "finished" and summary["task"] == "detection"
        assert summary["steps"] == {
            s: "done" for s in ("ingest", "autolabel", "review", "train", "evaluate", "register")
        }
        assert summary["frames"]["ingested"] == 120 and summary["frames"]["quarantined"] == 0

        # every frame got boxes, by the route that was safe for it; the audit measured what was automated
        labels = summary["labels"]
        assert labels["accepted"] == 120 and summary["frames"]["pending_review"] == 0
        assert labels["auto_accepted"] + labels["human"] == 120
        routing = summary["routing"]
        assert routing["validation_frames"] == 40 and routing["validation_quality"]["frames"] == 40
        solo = routing["one_tier_boxes"]  # what people confirmed of each tier's one-tier boxes, and its use
        assert set(solo) == {"break_even_precision", "T1", "T2"}
        for tier in ("T1", "T2"):
            assert 0 <= solo[tier]["right"] <= solo[tier]["total"]
            assert solo[tier]["shown"] == (solo[tier]["weight"] >= solo["break_even_precision"])
        # round 1 has no evidence on one-tier boxes: people box a probe of the sample first, and the rest is
        # suggested with the weights their answers give (before, the lab T2's wrong boxes cost a delete each)
        review = loop.pool.step(1, "review")[1]
        assert (review["calibration_tasks"], review["calibration_probe"]) == (40, 20)
        calibration = sorted(loop.task.boxes.tasks(purpose="calibration"), key=lambda t: t.id)
        part = loop.task
        found = solo_evidence(
            [(x, y, t.answer) for t, x, y in part.calibration_evidence(calibration[:20])], 0.5, part.threshold
        )
        weights = tuple(e.weight(part.detection.bound_z, part.detection.solo_min_boxes) for e in found)
        assert weights != (0.5, 0.5)  # the probe's answers weighed the tiers
        unweighed = 0
        for task, x, y in part.calibration_evidence(calibration[20:]):
            fused = consensus(x, y, 0.5, 0.7, part.threshold, weights, part.box_costs.break_even_precision).fused
            assert task.suggestion.rows(False) == fused.rows(False)
            unweighed += consensus(x, y, 0.5, 0.7, part.threshold).fused.rows(False) != fused.rows(False)
        assert unweighed > 0  # without the probe some of them would have shown other boxes
        threshold = routing["threshold"]
        if labels["auto_accepted"]:
            audit = summary["audit"]
            assert audit["final"]["frames"] >= 10
            assert audit["final"]["meets_target"] == (
                audit["final"]["mean_iou"] >= 0.7 and audit["final"]["class_accuracy"] >= 0.98
            )
            assert threshold["value"] is not None
        else:
            assert threshold["value"] is None and "reason" in threshold

        # box-level costs: the human work is itemised and priced from cost_model.yaml
        human, figures = summary["human"], summary["figures"]
        assert set(human["by_purpose"]) >= {"calibration"}
        assert human["seconds"] == pytest.approx(sum(p["seconds"] for p in human["by_purpose"].values()), abs=0.01)
        assert figures["accepted_frames"] == 120 and figures["manual_seconds"] > 0
        assert sum(human["box_edits"].values()) > 0

        # the simulated annotator boxes what the world drew: human labels match the truth
        assert summary["simulation_only"]["human"]["mean_iou"] > 0.85
        assert summary["simulation_only"]["human"]["class_accuracy"] == 1.0

        # new detectors, the mAP gate and the registry
        models = summary["models"]
        assert set(models) == {"T2", "T3", "T4"}
        for tier, model in models.items():
            assert 0.0 <= model["map50_after"] <= 1.0 and 0.0 <= model["map_after"] <= model["map50_after"] + 1e-9
            assert set(model["per_site_after"]) == {"site-0", "site-1"}
            candidate = load_manifest(loop.candidates(summary["round"])[tier])
            assert candidate.task == "detection" and candidate.version.startswith("r1-")
            assert candidate.detection.layout == load_manifest(detection_cloud_models[tier]).detection.layout
        assert len(summary["registry"]) == 3
        assert all(e["status"] in ("Approved", "Rejected") for e in summary["registry"])
        rows = map_per_round([summary])
        assert {r["tier"] for r in rows} == {"T2", "T3", "T4"}

        # the accepted boxes as a Ground Truth augmented manifest (bounding-box format) round-trips
        ids = sorted(loop.task.boxes.labels())[:10]
        records = augmented_box_manifest(loop.pool, loop.task.boxes, loop.store, ids, loop.task.classes)
        for frame_id, record in zip(ids, records):
            assert record["source-ref"].startswith("file://") and record["fleetloop-frame"] == frame_id
            meta = record["fleetloop-boxes-metadata"]
            assert meta["type"] == "groundtruth/object-detection" and meta["class-map"]["0"] == loop.task.classes[0]
            assert len(meta["objects"]) == len(record["fleetloop-boxes"]["annotations"])
            parsed = parse_box_record(record, loop.task.classes)
            np.testing.assert_allclose(parsed.boxes, loop.task.boxes.labels([frame_id])[frame_id].boxes.boxes, atol=1.0)
        # the training channel the job read is in the same format
        channel = read_box_channel("train", loop.work / "rounds" / "0001" / "channels" / "train", loop.task.classes)
        assert len(channel) == 120 and all(b is not None for b in channel.boxes)

        # a second round with nothing new: the steps skip, nothing is relabeled
        again = loop.run_round().to_dict()
        assert again["round"] == 2 and again["frames"]["ingested"] == 0
        assert again["steps"]["train"] == "skipped"


def test_review_page_answers_and_config_errors(tmp_path, detection_cloud_models, test_models):
    store, _ = _fleet(tmp_path, detection_cloud_models, frames=15)
    config = _config(
        tmp_path,
        store,
        detection_cloud_models["T1"].parent,
        review={"annotator": "simulated", "calibration_sample": 5, "strategy": "uncertainty"},
        detection={"annotator": "review-page", "min_validation": 10},
    )
    with CloudLoop(config, progress=False) as loop:
        first = loop.run_round().to_dict()
        assert first["status"] == "waiting" and first["steps"]["review"] == "waiting"
        tasks = loop.task.boxes.tasks(status="submitted")
        assert len(tasks) == 5 and all(t.backend == "review-page" for t in tasks)
        for task in tasks:  # what the page posts: accept the suggestion as it is
            answered = record_box_answer(
                loop.task.boxes, loop.task.box_costs, task.id, task.suggestion, "ann", loop.task.classes, seconds=2.5
            )
            assert answered.status == "done" and answered.seconds == 2.5
            assert answered.edits["kept"] == len(task.suggestion) and answered.edits["drawn"] == 0
        with pytest.raises(Exception, match="not open"):
            record_box_answer(
                loop.task.boxes, loop.task.box_costs, tasks[0].id, tasks[0].suggestion, "ann", loop.task.classes
            )
        (extra,) = loop.task.boxes.add_tasks(1, "review", [(tasks[0].frame_id, None)], shown=False)
        with pytest.raises(Exception, match="not a known class"):
            record_box_answer(
                loop.task.boxes,
                loop.task.box_costs,
                extra,
                BoxSet.from_rows([[0, 0, 5, 5, 42]], False),
                "ann",
                loop.task.classes,
            )
        drawn = record_box_answer(
            loop.task.boxes,
            loop.task.box_costs,
            extra,
            BoxSet.from_rows([[0, 0, 5, 5, 3]], False),
            "ann",
            loop.task.classes,
        )
        assert drawn.edits["drawn"] == 1 and drawn.seconds == pytest.approx(loop.task.box_costs.manual_seconds(1))
        second = loop.run_round().to_dict()
        assert second["routing"]["validation_frames"] == 5
        assert second["status"] == "waiting" or second["labels"]["accepted"] == 30
    with pytest.raises(ConfigError, match="unknown box annotator 'crowd'"):
        CloudLoop(
            _config(tmp_path / "b", store, detection_cloud_models["T1"].parent, detection={"annotator": "crowd"}),
            progress=False,
        )
    with pytest.raises(ConfigError, match="needs detector tiers"):
        CloudLoop(_config(tmp_path / "c", store, test_models["T1"].parent), task="detection", progress=False)
    assert ROOT.is_dir()


def test_cloud_cli_runs_the_detection_loop_and_writes_box_manifests(tmp_path, detection_cloud_models, capsys):
    import yaml

    from fleetloop_cloud.cli import main as cloud_cli

    store, _ = _fleet(tmp_path, detection_cloud_models, frames=10)
    data = cloud_config(
        tmp_path,
        store.uri,
        detection_cloud_models["T1"].parent,
        review={"annotator": "simulated", "calibration_sample": 4, "strategy": "uncertainty"},
        detection={"annotator": "review-page", "min_validation": 10},
    )
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cloud_cli(["round", "--config", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "FleetLoop detection round 1 (waiting)" in out and "box labels accepted" in out
    with CloudLoop(cloud_config_from_dict(data), progress=False) as loop:
        for task in loop.task.boxes.tasks(status="submitted"):
            record_box_answer(
                loop.task.boxes,
                loop.task.box_costs,
                task.id,
                BoxSet.from_rows([[4, 4, 30, 30, 2]], False),
                "ann",
                loop.task.classes,
            )
    assert cloud_cli(["round", "--config", str(path), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "detection" and summary["routing"]["validation_frames"] == 4
    assert cloud_cli(["manifest", "--config", str(path), "--no-progress", "--source", "human"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(records) == 4
    for record in records:
        assert record["fleetloop-boxes"]["annotations"] == [
            {"class_id": 2, "left": 4, "top": 4, "width": 26, "height": 26}
        ]
        assert record["fleetloop-boxes-metadata"]["human-annotated"] == "yes"


def test_calibration_boxes_are_scored_by_the_teachers_of_their_own_round(tmp_path, detection_cloud_models):
    store, _ = _fleet(tmp_path, detection_cloud_models, frames=30)
    review = {"annotator": "simulated", "calibration_sample": 20, "strategy": "uncertainty"}
    with CloudLoop(
        _config(tmp_path, store, detection_cloud_models["T1"].parent, review=review), progress=False
    ) as loop:
        assert loop.run_round().to_dict()["status"] == "finished"
        part = loop.task
        before = part.calibration_evidence()
        assert len(before) == 20
        # a later T2 trained on these very labels boxes them perfectly; it must not vouch for itself
        tasks = [task for task, _, _ in before]
        part.boxes.put_predictions(
            "T2",
            "trained-on-them",
            [(t.frame_id, BoxSet(t.answer.boxes, np.ones(len(t.answer), np.float32), t.answer.classes)) for t in tasks],
        )
        versions = loop.pool.step(1, "autolabel")[1]["versions"]
        loop.pool.set_step(2, "autolabel", "done", {"versions": {**versions, "T2": "trained-on-them"}})
        after = part.calibration_evidence()
        assert [t.id for t, _, _ in after] == [t.id for t in tasks]
        for (_, _, old), (_, _, new) in zip(before, after):
            np.testing.assert_array_equal(old.boxes, new.boxes)  # still round 1's T2
        ids = [t.frame_id for t in tasks]  # while round 2's own frames get round 2's T2
        now = part.fuse(
            part.boxes.predictions("T1", versions["T1"], ids), part.boxes.predictions("T2", "trained-on-them", ids)
        )
        assert [c.fused.rows() for c in part.consensus(2, ids)] == [c.fused.rows() for c in now]
        assert [c.fused.rows() for c in part.consensus(2, ids)] != [c.fused.rows() for c in part.consensus(1, ids)]


def test_a_box_audit_pass_is_judged_with_the_standing_answers_of_the_passes_before_it(tmp_path, detection_cloud_models):
    from types import SimpleNamespace

    store = open_store(f"file://{tmp_path / 'store'}")
    with CloudLoop(_config(tmp_path, store, detection_cloud_models["T1"].parent), progress=False) as loop:
        part = loop.task
        box = [10, 10, 40, 40]

        def task(number: int, right: bool):
            suggestion = BoxSet.from_rows([[*box, 1]], False)
            answer = BoxSet.from_rows([[*box, 1 if right else 2]], False)  # the person names another class
            return SimpleNamespace(id=number, suggestion=suggestion, answer=answer, status="done")

        earlier = [task(i, right=i != 0) for i in range(10)]  # a first pass: 9 of 10 boxes of the right class
        this_pass = [task(10 + i, right=True) for i in range(10)]  # all right: alone it would pass
        record: dict = {}
        standing = [(t, "auto") for t in earlier + this_pass]
        assert not part.measure_audit(record, this_pass, this_pass, standing)  # 19 of 20: under 0.98
        assert record["class_accuracy"] == 1.0 and record["pooled"]["frames"] == 20
        assert part.measure_audit(record, this_pass, this_pass, [(t, "auto") for t in this_pass])
        assert part.audit_can_pass(standing, 0)  # a box audit runs every pass it is allowed
