"""Routing on pooled evidence: per-class thresholds, T2 as one input, and the evidence reset when a teacher changes.

Teacher outputs are written into the pool directly (no model runs); humans are the simulated
annotator without errors, so every human label is the frame's truth.
"""

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud import routing
from fleetloop_cloud.loop.tasks.classification_routing import EVIDENCE_KEY, Fit, promising
from fleetloop_cloud.review.items import describe, teachers

from fixtures.cloud_world import cloud_config, peaked_probs, pool_frame

SHIRT, TROUSER, BAG, DRESS = (LABELS.index(c) for c in ("shirt", "trouser", "bag", "dress"))


class World:
    def __init__(self, loop):
        self.loop, self.index = loop, 0

    def add(self, round_number, truth, t1, t2, confidence, random, versions=(("T1", "a"), ("T2", "b"))):
        self.index += 1
        record = pool_frame(self.index, truth, random, round_number)
        sha = record.id
        self.loop.pool.add_frame(record)
        for (tier, version), label in zip(versions, (t1, t2)):
            embedding = np.eye(4, dtype=np.float32)[self.index % 4][None]
            self.loop.pool.put_predictions(tier, version, [sha], peaked_probs(label, confidence)[None], embedding)
        return sha

    def predict(self, frames, tier, version, label, confidence):
        """A new teacher version predicts frames already in the pool (autolabel does)."""
        for f in frames:
            self.loop.pool.put_predictions(
                tier, version, [f], peaked_probs(label, confidence)[None], np.eye(4, dtype=np.float32)[:1]
            )

    def ingested(self, round_number, t2_version="b"):
        """Mark the round's ingest and autolabel steps done (T1 "a", T2 ``t2_version``)."""
        self.loop.pool.set_step(round_number, "ingest", "done", {"ingested": self.index})
        self.loop.pool.set_step(round_number, "autolabel", "done", {"versions": {"T1": "a", "T2": t2_version}})


def _loop(
    tmp_path,
    cloud_models,
    calibration_sample,
    second_opinion=("calibration", "review", "audit"),
    refresh=None,
    more=0,
    min_validation=30,
    second_opinion_min_confidence=0.0,
):
    data = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={
            "target_accuracy": 0.98,
            "bound_z": 1.0,
            "min_validation": min_validation,
            "propagation": {"enabled": False},
            "second_opinion": list(second_opinion),
            "second_opinion_min_confidence": second_opinion_min_confidence,
        },
        review={"calibration_sample": calibration_sample, "calibration_refresh": refresh, "calibration_more": more},
        audit={"fraction": 0.05, "min_frames": 10, "max_passes": 1},
        annotators={"simulated": {"error_rate": 0.0}},
    )
    return CloudLoop(cloud_config_from_dict(data), progress=False)


def test_t1_alone_carries_a_class_its_evidence_allows_while_t2_disagrees_and_each_class_has_its_threshold(
    tmp_path, cloud_models
):
    with _loop(tmp_path, cloud_models, calibration_sample=200) as loop:
        loop.pool.open_round()
        world = World(loop)
        # T1 right on trousers (T2, lab-trained, says bag), T1 often wrong on shirts; the calibration sample
        # is 200 of these 300 frames
        trousers = [world.add(1, TROUSER, TROUSER, BAG, 0.97, random=i % 2 == 0) for i in range(150)]
        for i in range(100):
            world.add(1, SHIRT if i % 4 else TROUSER - 1, SHIRT, SHIRT, 0.95, random=True)
        shirts = [world.add(1, SHIRT, SHIRT, SHIRT, 0.95, random=False) for _ in range(50)]
        world.ingested(1)

        info = loop.review()
        sampled = {t.frame_id for t in loop.pool.tasks(purpose="calibration")}
        rest, shirts = [f for f in trousers if f not in sampled], [f for f in shirts if f not in sampled]
        assert len(sampled) == 200 and rest and shirts

        weights = info["weights"]
        assert weights[0] > weights[1]  # T1 earned more weight than the T2 that says bag
        assert info["thresholds"]["trouser"]["value"] is not None  # automated although T2 disagrees
        assert info["thresholds"]["shirt"]["value"] is None  # 75 % right: not automated
        labels = loop.pool.labels()
        assert all(labels[f].label == TROUSER for f in rest)
        audited = {t.frame_id for t in loop.pool.tasks(purpose="audit")}
        assert all(labels[f].source == "auto" for f in rest if f not in audited) and len(audited) < len(rest)
        assert all(labels[f].source == "human" for f in shirts)
        unaudited = next(f for f in rest if f not in audited)
        reason = loop.pool.label_events(unaudited)[-1]["reason"]  # the evidence that admitted the label
        assert "class trouser" in reason and "audited frames since round 0" in reason and "T2 disagrees" in reason
        assert loop.pool.get(EVIDENCE_KEY) == {"versions": ["T1", "a", "T2", "b"], "since_round": 0}


def test_evidence_pools_across_rounds_and_restarts_when_a_changed_teacher_fails_the_fresh_sample(
    tmp_path, cloud_models
):
    with _loop(tmp_path, cloud_models, calibration_sample=1000) as loop:
        world = World(loop)
        # round 1: 1000 random trousers, all right: plenty of evidence for the class
        loop.pool.open_round()
        first = [world.add(1, TROUSER, TROUSER, TROUSER, 0.99, random=True) for _ in range(1000)]
        world.ingested(1)
        assert loop.review()["evidence"] == {"since_round": 0, "frames": 1000, "revalidation": None}
        loop.pool.finish_round(1, {})

        # round 2: a new T2 version; the world changed too: a fifth of the confident "trousers" are bags now
        loop.pool.open_round()
        world.predict(first, "T2", "c", TROUSER, 0.99)  # the new version predicts the old evidence frames too
        versions = (("T1", "a"), ("T2", "c"))
        for i in range(60):
            world.add(2, BAG if i % 5 == 0 else TROUSER, TROUSER, TROUSER, 0.99, random=True, versions=versions)
        world.ingested(2, "c")

        info = loop.review()

        # pooled, 1048 of 1060 are right (the threshold would pass); the fresh sample alone says otherwise
        revalidation = info["evidence"]["revalidation"]
        assert revalidation["keep"] is False and revalidation["frames"] == 60 and revalidation["correct"] == 48
        assert info["evidence"]["since_round"] == 2 and info["evidence"]["frames"] == 60
        assert info["thresholds"]["trouser"]["value"] is None  # 48 of 60: not automated on the fresh evidence
        assert loop.pool.get(EVIDENCE_KEY)["since_round"] == 2


def test_evidence_is_scored_by_the_teachers_of_its_round_never_by_a_t2_trained_on_it(tmp_path, cloud_models):
    with _loop(tmp_path, cloud_models, calibration_sample=100) as loop:
        world = World(loop)
        loop.pool.open_round()
        # round 1: T1 right, the lab-trained T2 "b" says bag
        first = [world.add(1, TROUSER, TROUSER, BAG, 0.97, random=True) for _ in range(100)]
        world.ingested(1)
        loop.review()
        loop.pool.finish_round(1, {})

        loop.pool.open_round()
        world.predict(first, "T2", "c", TROUSER, 0.999)  # T2 "c" was trained on round 1's labels: it knows them
        versions = (("T1", "a"), ("T2", "c"))
        for _ in range(60):  # on new frames it is as wrong as before
            world.add(2, TROUSER, TROUSER, BAG, 0.97, random=True, versions=versions)
        world.ingested(2, "c")

        info = loop.review()

        assert info["evidence"]["frames"] >= 160
        assert info["weights"][1] < 0.05 < info["weights"][0]  # T2 earned nothing out of sample


def test_an_answer_that_contradicts_the_suggestion_gets_a_second_opinion_and_a_third_when_they_disagree(
    tmp_path, cloud_models
):
    with _loop(tmp_path, cloud_models, calibration_sample=40) as loop:
        loop.pool.open_round()
        world = World(loop)
        trousers = [world.add(1, TROUSER, TROUSER, TROUSER, 0.97, random=True) for _ in range(38)]
        bag = world.add(1, BAG, TROUSER, TROUSER, 0.97, random=True)  # the teachers are wrong here
        slipped = trousers[0]  # a person slipped here: answered bag where the suggestion, trouser, was right
        (task,) = loop.pool.add_tasks(1, "calibration", [(slipped, TROUSER)])
        loop.pool.answer_task(task, BAG, "someone", 6.0, 0.0)
        world.ingested(1)

        info = loop.review()

        asked = [t for t in loop.pool.tasks(purpose="second-opinion")]
        by_frame = {f: [t for t in asked if t.frame_id == f] for f in (slipped, bag)}
        # the right contradiction is confirmed by a second person; the slip is outvoted by the second and third;
        # each sees the latest answer as the suggestion (agreeing with it is a verification)
        assert [(t.suggestion, t.answer) for t in by_frame[bag]] == [(BAG, BAG)]
        assert [(t.suggestion, t.answer) for t in by_frame[slipped]] == [(BAG, TROUSER), (TROUSER, TROUSER)]
        assert len(asked) == 3 and info["second_opinions"] == 3
        labels = loop.pool.labels([slipped, bag])
        assert labels[slipped].label == TROUSER and labels[bag].label == BAG
        ids, answers, rounds, _ = loop.task.evidence_set(1)
        evidence = dict(zip(ids, answers))
        assert evidence[slipped] == TROUSER and evidence[bag] == BAG and set(rounds.tolist()) == {1}
        # every other answer agreed with its suggestion: nobody else was asked
        assert {t.frame_id for t in asked} == {slipped, bag}


@pytest.mark.parametrize("floor", [0.0, 0.8])
def test_a_contradiction_the_committee_was_unsure_of_gets_a_second_opinion_only_without_a_floor(
    tmp_path, cloud_models, floor
):
    with _loop(tmp_path, cloud_models, calibration_sample=60, second_opinion_min_confidence=floor) as loop:
        loop.pool.open_round()
        world = World(loop)
        # a calibrated committee: right on 38 of 39 frames it gives 0.97, on half the frames it gives 0.5
        for _ in range(38):
            world.add(1, TROUSER, TROUSER, TROUSER, 0.97, random=True)
        sure_and_wrong = world.add(1, BAG, TROUSER, TROUSER, 0.97, random=True)
        unsure = [world.add(1, TROUSER if i % 2 else BAG, TROUSER, TROUSER, 0.5, random=True) for i in range(20)]
        world.ingested(1)

        info = loop.review()

        assert len(loop.pool.tasks(purpose="calibration")) == 59
        asked = {t.frame_id for t in loop.pool.tasks(purpose="second-opinion")}
        unsure_and_wrong = set(unsure[0::2])
        # with the floor, only where the committee was sure: below it the person is nearly always right
        assert asked == ({sure_and_wrong} if floor else {sure_and_wrong} | unsure_and_wrong)
        assert info["weights"][0] + info["weights"][1] == pytest.approx(1.0, abs=0.3)  # calibrated as built
        labels = loop.pool.labels()
        assert all(labels[f].label == BAG for f in unsure_and_wrong)  # the first person's label stands


@pytest.mark.parametrize("asking", [("calibration", "review", "audit"), ("calibration",)])
def test_an_auditors_slip_is_outvoted_before_the_audit_is_measured(tmp_path, cloud_models, asking):
    with _loop(tmp_path, cloud_models, calibration_sample=0, second_opinion=asking) as loop:
        loop.pool.open_round()
        world = World(loop)
        frames = [world.add(1, TROUSER, TROUSER, TROUSER, 0.99, random=False) for _ in range(10)]
        for f in frames:  # right auto labels
            loop.pool.set_label(f, TROUSER, "auto", 1, reason="test")
        tasks = loop.pool.add_tasks(1, "audit", [(f, TROUSER) for f in frames])
        for number, task in enumerate(tasks):  # the auditor slips once
            loop.pool.answer_task(task, BAG if number == 0 else TROUSER, "auditor", 1.6, 0.0)
        part = loop.task

        def done():
            return [loop.pool.task(t) for t in tasks]

        if "audit" not in asking:  # no second opinions on audits: the slip counts against the label
            assert part.second_opinions(1, done()) == 0
            record = {"sources": {str(t): "auto" for t in tasks}}
            assert not part.measure_audit(record, done(), done(), [(t, "auto") for t in done()])
            assert record["correct"] == 9
            return
        assert part.second_opinions(1, done()) == 1  # only the contradicted label
        (second,) = loop.pool.tasks(purpose="second-opinion")
        assert (second.frame_id, second.suggestion) == (frames[0], BAG)  # the auditor's answer, to verify
        loop.pool.answer_task(second.id, TROUSER, "second", 6.0, 0.0)
        assert part.second_opinions(1, done()) == 1  # the two disagree: a third person
        third = loop.pool.tasks(purpose="second-opinion")[-1]
        loop.pool.answer_task(third.id, TROUSER, "third", 1.6, 0.0)
        assert part.second_opinions(1, done()) == 0

        record = {"sources": {str(t): "auto" for t in tasks}}
        assert part.measure_audit(record, done(), done(), [(t, "auto") for t in done()])
        assert record["correct"] == 10 and record["by_source"]["auto"]["correct"] == 10


def test_unchanged_teachers_with_pooled_evidence_get_a_small_fresh_sample_and_a_changed_one_the_full_sample(
    tmp_path, cloud_models
):
    def calibration_asked(round_number):
        return len(loop.pool.tasks(round=round_number, purpose="calibration"))

    with _loop(tmp_path, cloud_models, calibration_sample=40, refresh=10) as loop:
        world = World(loop)
        frames = {}
        for number, t2 in ((1, "b"), (2, "b"), (3, "c")):
            loop.pool.open_round()
            world.predict([f for fs in frames.values() for f in fs], "T2", t2, TROUSER, 0.99)
            versions = (("T1", "a"), ("T2", t2))
            frames[number] = [world.add(number, TROUSER, TROUSER, TROUSER, 0.99, True, versions) for _ in range(80)]
            world.ingested(number, t2)
            info = loop.review()
            loop.pool.finish_round(number, {})
            if number == 1:  # no earlier evidence: the full sample
                assert calibration_asked(1) == 40 and info["calibration_reason"] == "first round with teachers"
            if number == 2:  # the same teachers, 40 answers pooled: a fresh sample of 10 keeps it current
                assert calibration_asked(2) == 10 and "teachers unchanged since round 1" in info["calibration_reason"]
            if number == 3:  # a new T2: its pooled evidence is re-checked on a full fresh sample
                assert calibration_asked(3) == 40 and "teachers changed since round 2" in info["calibration_reason"]


@pytest.mark.parametrize("more", [0, 20])
def test_more_random_frames_unlock_a_class_short_of_evidence_but_not_one_whose_sure_frames_err(
    tmp_path, cloud_models, more
):
    with _loop(tmp_path, cloud_models, calibration_sample=30, more=more, min_validation=10) as loop:
        loop.pool.open_round()
        world = World(loop)
        rng = np.random.default_rng(0)
        # trousers the teachers always get right; "shirts" the teachers are as sure of, 30 % of them T-shirts
        trousers = [
            world.add(1, TROUSER, TROUSER, TROUSER, float(rng.uniform(0.95, 0.999)), random=True) for _ in range(150)
        ]
        shirts = [
            world.add(1, SHIRT if rng.random() < 0.7 else 0, SHIRT, SHIRT, float(rng.uniform(0.95, 0.999)), random=True)
            for _ in range(150)
        ]
        world.ingested(1)

        info = loop.review()

        calibration = loop.pool.tasks(round=1, purpose="calibration")
        labels = loop.pool.labels()
        auto = [f for f in trousers + shirts if labels[f].source == "auto"]
        if not more:  # 30 random frames, ~15 trousers: a threshold needs ~49 right, everything goes to people
            assert len(calibration) == 30 and not auto and info["thresholds"]["trouser"]["value"] is None
            return
        # more trousers, 20 at a time, until trousers had the evidence (~49 right); shirts' surest frames hold
        # errors, so no more shirts are asked about; never past calibration_max (120)
        assert info["calibration_more"] == len(calibration) - 30 > 0 and len(calibration) <= 120
        assert info["thresholds"]["trouser"]["value"] is not None and info["thresholds"]["shirt"]["value"] is None
        assert auto and all(labels[f].label == TROUSER for f in auto)
        assert len(auto) >= 50  # most of the trousers no person was asked about
        asked = {t.frame_id for t in calibration}
        assert sum(f in asked for f in shirts) < 30  # only the first sample's shirts: their errors showed at once
        assert sum(f in asked for f in trousers) >= 49


def test_more_random_frames_in_a_stream_are_frames_alone_in_their_track(tmp_path, cloud_models):
    data = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={"target_accuracy": 0.98, "bound_z": 1.0, "min_validation": 30, "second_opinion": []},
        review={"calibration_sample": 10, "calibration_more": 10, "calibration_max": 60},
        audit={"fraction": 0.05, "min_frames": 10, "max_passes": 1},
        annotators={"simulated": {"error_rate": 0.0}},
    )
    with CloudLoop(cloud_config_from_dict(data), progress=False) as loop:
        loop.pool.open_round()
        rng = np.random.default_rng(1)
        track: dict[str, int] = {}

        def add(index: int, stamp_ns: int, hint: str | None, embedding: np.ndarray) -> str:
            record = replace(pool_frame(index, TROUSER, True), stamp_ns=stamp_ns, track_hint=hint)
            loop.pool.add_frame(record)
            for tier, version in (("T1", "a"), ("T2", "b")):
                probs = peaked_probs(TROUSER, float(rng.uniform(0.95, 0.999)))[None]
                loop.pool.put_predictions(tier, version, [record.id], probs, embedding[None])
            return record.id

        # 40 tracks of trousers, 4 frames each 0.1 s apart, and 80 frames alone (10 s between any two)
        embeddings = np.eye(120, dtype=np.float32)
        for k in range(40):
            for j in range(4):
                track[add(4 * k + j, k * 10**10 + j * 10**8, f"t{k}", embeddings[k])] = k
        alone = {add(160 + i, (40 + i) * 10**10, None, embeddings[40 + i]) for i in range(80)}
        loop.pool.set_step(1, "ingest", "done", {"ingested": 240})
        loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})

        info = loop.review()

        calibration = sorted(loop.pool.tasks(round=1, purpose="calibration"), key=lambda t: t.id)
        more = calibration[10:]
        assert more and info["calibration_more"] == len(more)
        # a track's frames get one person's label that propagates; more random frames come from the lone ones
        assert all(t.frame_id in alone for t in more)
        labels = loop.pool.labels()
        assert all(label.label == TROUSER for label in labels.values()) and len(labels) == 240


@pytest.mark.parametrize("track_frames", ["frame", "human"])
def test_frames_of_a_track_are_left_to_its_one_human_label_unless_routing_may_auto_accept_them(
    tmp_path, cloud_models, track_frames
):
    data = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={
            "min_validation": 30,
            "second_opinion": [],
            "propagation": {"track_frames": track_frames},
        },
        review={"calibration_sample": 60, "calibration_more": 0},
        audit={"fraction": 0.05, "min_frames": 10, "max_passes": 1},
        annotators={"simulated": {"error_rate": 0.0}},
    )
    with CloudLoop(cloud_config_from_dict(data), progress=False) as loop:
        loop.pool.open_round()
        rng = np.random.default_rng(2)
        in_tracks, alone = set(), set()
        embeddings = np.eye(120, dtype=np.float32)
        for index in range(240):  # 40 trouser tracks of 4 frames 0.1 s apart, then 80 frames alone
            k = index // 4 if index < 160 else index - 120
            stamp = (k * 10**10 + (index % 4) * 10**8) if index < 160 else k * 10**10
            record = replace(
                pool_frame(index, TROUSER, True), stamp_ns=stamp, track_hint=f"t{k}" if index < 160 else None
            )
            loop.pool.add_frame(record)
            for tier, version in (("T1", "a"), ("T2", "b")):
                probs = peaked_probs(TROUSER, float(rng.uniform(0.97, 0.999)))[None]
                loop.pool.put_predictions(tier, version, [record.id], probs, embeddings[k][None])
            (in_tracks if index < 160 else alone).add(record.id)
        loop.pool.set_step(1, "ingest", "done", {"ingested": 240})
        loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})

        info = loop.review()

        labels = loop.pool.labels()
        assert info["thresholds"]["trouser"]["value"] is not None and len(labels) == 240
        auto = {f for f, label in labels.items() if label.source == "auto"}
        assert auto & alone  # lone frames are auto-accepted either way
        if track_frames == "frame":
            assert auto & in_tracks
        else:  # a track's frames wait for its one human label, which propagates
            assert not auto & in_tracks
            assert {labels[f].source for f in in_tracks} <= {"human", "propagated"}
            assert sum(labels[f].source == "propagated" for f in in_tracks) > 80


def test_a_frame_propagation_left_out_is_suggested_its_tracks_label_for_review(tmp_path, cloud_models):
    data = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={"second_opinion": []},
        review={"calibration_sample": 5, "calibration_more": 0},
        audit={"fraction": 0.05, "min_frames": 10, "max_passes": 1},
        annotators={"simulated": {"error_rate": 0.0}},
    )
    with CloudLoop(cloud_config_from_dict(data), progress=False) as loop:
        loop.pool.open_round()
        odd, alone = [], []
        for k in range(20):  # 20 trouser tracks of 4 frames; the teachers call the last frame of each a shirt
            embedding = np.eye(40, dtype=np.float32)[k][None]
            for j in range(4):
                record = replace(
                    pool_frame(4 * k + j, TROUSER, False), stamp_ns=k * 10**10 + j * 10**8, track_hint=f"t{k}"
                )
                loop.pool.add_frame(record)
                said, sure = (SHIRT, 0.6) if j == 3 else (TROUSER, 0.9)
                for tier, version in (("T1", "a"), ("T2", "b")):
                    loop.pool.put_predictions(tier, version, [record.id], peaked_probs(said, sure)[None], embedding)
                if j == 3:
                    odd.append(record.id)
        for i in range(10):  # frames alone, a bag the teachers call a shirt
            record = replace(pool_frame(100 + i, BAG, False), stamp_ns=(30 + i) * 10**10)
            loop.pool.add_frame(record)
            for tier, version in (("T1", "a"), ("T2", "b")):
                embedding = np.eye(40, dtype=np.float32)[20 + i][None]
                loop.pool.put_predictions(tier, version, [record.id], peaked_probs(SHIRT, 0.9)[None], embedding)
            alone.append(record.id)
        loop.pool.set_step(1, "ingest", "done", {"ingested": 90})
        loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})

        loop.review()

        review = {t.frame_id: t for t in loop.pool.tasks(round=1, purpose="review")}
        track_labeled = [f for f in odd if f in review]
        assert len(track_labeled) >= 15  # the odd frame of every track a person labeled (one may be in calibration)
        verify = loop.cost_model.human.seconds_per_verify
        assert all(review[f].suggestion == TROUSER and review[f].seconds == verify for f in track_labeled)
        assert all(review[f].suggestion == SHIRT and review[f].answer == BAG for f in alone if f in review)
        # the review page says where each suggestion came from
        state, labels = teachers(loop.pool, loop.config), loop.task.frame_labels
        shown = {f: describe(loop.pool, loop.config, labels, review[f], state)["suggestion"] for f in review}
        assert all(shown[f]["source"] == "track" and shown[f]["name"] == labels[TROUSER] for f in track_labeled)
        assert all(shown[f]["source"] == "teachers" for f in alone if f in review)


def _track_world(tmp_path, cloud_models, track_frames, tracks, length, alone, calibration, seed):
    """A round of ``tracks`` trouser tracks of ``length`` frames (0.1 s apart) and ``alone`` lone trousers,
    the teachers sure of every frame; the second frame of track 0 they call a dress. Returns (loop,
    {frame: its track}, the frames alone, the dress frame)."""
    data = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        routing={"min_validation": 30, "second_opinion": [], "propagation": {"track_frames": track_frames}},
        review={"calibration_sample": calibration, "calibration_more": 0},
        audit={"fraction": 0.05, "min_frames": 10, "max_passes": 1},
        annotators={"simulated": {"error_rate": 0.0}},
    )
    loop = CloudLoop(cloud_config_from_dict(data), progress=False)
    loop.pool.open_round()
    rng = np.random.default_rng(seed)
    track_of, lone, dress = {}, set(), ""
    embeddings = np.eye(tracks + alone, dtype=np.float32)
    for k in range(tracks + alone):
        for j in range(length if k < tracks else 1):
            index = len(track_of) + len(lone)
            record = replace(
                pool_frame(index, TROUSER, True),
                stamp_ns=k * 10**10 + j * 10**8,
                track_hint=f"t{k}" if k < tracks else None,
            )
            loop.pool.add_frame(record)
            said = DRESS if (k, j) == (0, 1) else TROUSER
            for tier, version in (("T1", "a"), ("T2", "b")):
                probs = peaked_probs(said, float(rng.uniform(0.97, 0.999)))[None]
                loop.pool.put_predictions(tier, version, [record.id], probs, embeddings[k][None])
            if k < tracks:
                track_of[record.id] = k
                dress = record.id if said == DRESS else dress
            else:
                lone.add(record.id)
    loop.pool.set_step(1, "ingest", "done", {"ingested": len(track_of) + len(lone)})
    loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    return loop, track_of, lone, dress


def test_a_track_is_auto_labeled_as_one_where_the_evidence_counted_per_track_allows(tmp_path, cloud_models):
    loop, track_of, _, dress = _track_world(tmp_path, cloud_models, "track", 120, 3, 0, 70, 3)
    with loop:
        info = loop.review()

        labels = loop.pool.labels()
        decided = info["tracks"]
        assert decided["evidence_tracks"] >= 49 and decided["thresholds"]["trouser"]["value"] is not None
        by_track = [
            f for f in labels if any("with its track" in e["reason"] for e in loop.pool.label_events(f))
        ]  # some of them audited since
        assert decided["accepted_tracks"] > 0 and len(by_track) == decided["accepted_frames"]
        human = {track_of[f] for f in labels if any("calibration" in e["reason"] for e in loop.pool.label_events(f))}
        for frame in by_track:  # a whole track no person had labeled, each of its frames with the track's class
            assert track_of[frame] not in human and labels[frame].label == TROUSER
            assert all(f in by_track for f, k in track_of.items() if k == track_of[frame] and f != dress)
        # a frame whose committee contradicts its track's class is left to people
        assert dress not in by_track and labels[dress].source == "human"


@pytest.mark.parametrize("track_frames", ["frame", "track"])
def test_frames_of_a_track_are_judged_on_evidence_counted_per_track(tmp_path, cloud_models, track_frames):
    # 200 lone frames and 10 tracks of 4: the calibration sample is evidence enough for frames, not for tracks
    loop, track_of, lone, _ = _track_world(tmp_path, cloud_models, track_frames, 10, 4, 200, 60, 4)
    with loop:
        info = loop.review()

        labels = loop.pool.labels()
        assert info["thresholds"]["trouser"]["value"] is not None
        events = {f: [e["reason"] for e in loop.pool.label_events(f)] for f in labels}
        auto = {f for f, reasons in events.items() if any(r.startswith("auto-accepted") for r in reasons)}
        assert auto & lone
        asked = {track_of[f] for f, reasons in events.items() if f in track_of and "calibration" in reasons[0]}
        unasked = {f for f, k in track_of.items() if k not in asked}
        assert unasked  # tracks no calibration frame fell in
        if track_frames == "frame":
            assert unasked <= auto
        else:  # at most 10 evidence tracks: no track threshold, the tracks wait for one person's label
            assert info["tracks"]["evidence_tracks"] <= 10 and not unasked & auto


def test_the_calibration_sample_takes_one_frame_of_a_track(tmp_path, cloud_models):
    # 40 tracks of 4 frames and 40 lone frames: 60 calibration frames from 80 tracks (a lone frame is its own)
    loop, track_of, lone, _ = _track_world(tmp_path, cloud_models, "frame", 40, 4, 40, 60, 5)
    with loop:
        loop.review()

        drawn = [t.frame_id for t in loop.pool.tasks(round=1, purpose="calibration")]
        tracks_drawn = [track_of[f] for f in drawn if f in track_of]
        assert len(drawn) == 60 and set(drawn) & lone and tracks_drawn
        assert len(set(tracks_drawn)) == len(tracks_drawn)  # the other frames of a drawn track propagate


def test_where_tracks_are_fewer_than_the_sample_each_gives_one_frame_before_any_gives_another(tmp_path, cloud_models):
    loop, track_of, _, _ = _track_world(tmp_path, cloud_models, "frame", 10, 8, 0, 30, 6)
    with loop:
        loop.review()

        drawn = [t.frame_id for t in loop.pool.tasks(round=1, purpose="calibration")]
        assert len(drawn) == 30 and sorted(Counter(track_of[f] for f in drawn).values()) == [3] * 10


def test_a_class_is_promising_until_its_surest_evidence_rules_the_target_out():
    def threshold(value: float, eligible: int, right_of_30: int) -> routing.Threshold:
        return routing.Threshold(value, eligible, eligible, 0, right_of_30 / 30, 0.0, "test")

    fit = Fit(
        (0.5, 0.5),
        [
            threshold(0.9, 80, 30),  # automated: nothing to ask
            threshold(math.inf, 12, 0),  # too few frames yet (the pooled group)
            threshold(math.inf, 60, 30),  # its surest 30 all right: short only of frames
            threshold(math.inf, 60, 29),  # one error among them: 0.98 still possible at z = 1
            threshold(math.inf, 60, 28),  # two: ruled out, no more frames asked
        ],
        np.zeros(0, bool),
        np.zeros(0, bool),
    )
    assert promising(fit, 30, 0.98, 1.0) == [1, 2, 3]
    assert promising(fit, 30, 0.98, 0.0) == [1, 2]  # z = 0: the point estimate, as before 2026-12-06
