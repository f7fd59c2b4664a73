"""Frame selection (fleetloop_core.selection): config errors, policies, budgets, dedup, random samples, updates."""

import threading
from pathlib import Path

import numpy as np
import pytest

from fleetloop_core.cascade import FrameResult
from fleetloop_core.errors import ConfigError
from fleetloop_core.selection import Selector
from fleetloop_core.selection_decision import value_score
from fleetloop_core.selection_config import load_selection_config, selection_config
from fleetloop_core.selection_limits import TokenBucket
from fleetloop_core.selection_policies import POLICIES
from fleetloop_core.contracts.sidecar import parse_sidecar

LABELS = tuple(f"c{i}" for i in range(10)) + ("none",)
PERIOD_NS = 100_000_000  # 10 Hz
IMAGE = np.zeros((32, 32, 3), np.uint8)


def result(score=0.5, label=0, embedding=None, **parts):
    """A FrameResult whose six scores all equal ``score`` unless given in ``parts``."""
    probs = np.full(len(LABELS), 1 / len(LABELS), np.float32)
    scores = {
        name: float(parts.get(name, score))
        for name in ("entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty")
    }
    return FrameResult(
        label=label,
        label_name=LABELS[label],
        confidence=0.4,
        tier_used="T4",
        probs=probs,
        scores=scores,
        escalated=False,
        latency_s={"T4": 1e-4},
        model_versions={"T4": "v1"},
        tier_outputs={"T4": probs},
        embeddings={} if embedding is None else {"T4": embedding},
    )


def config(**sections):
    base = {"dedup": {"enabled": False}, "random_fraction": 0.0}
    for key, value in sections.items():
        base[key] = value
    return selection_config(base)


def distinct_image(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- config


def test_shipped_config_loads_and_names_every_policy():
    shipped = load_selection_config()
    assert shipped.policy.name in POLICIES
    assert {"threshold", "adaptive_budget", "novelty", "disagreement", "class_quota", "random"} <= set(POLICIES)


def test_out_of_range_value_names_file_key_and_value(tmp_path):
    path = tmp_path / "selection.yaml"
    path.write_text("budget:\n  frames_per_hour: -5\n")
    with pytest.raises(ConfigError) as info:
        load_selection_config(path)
    message = str(info.value)
    assert str(path) in message and "budget.frames_per_hour" in message and "-5" in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "selection.yaml"
    path.write_text("budget:\n  frames_per_hour: [600\n")
    with pytest.raises(ConfigError, match=r"selection\.yaml: line \d+"):
        load_selection_config(path)


def test_unknown_policy_names_file_bad_name_and_known_names(tmp_path):
    path = tmp_path / "selection.yaml"
    path.write_text("policy:\n  name: most_fun\n")
    with pytest.raises(ConfigError) as info:
        load_selection_config(path)
    message = str(info.value)
    assert str(path) in message and "'most_fun'" in message
    assert all(name in message for name in POLICIES)


def test_bad_policy_param_and_unknown_key_are_named(tmp_path):
    path = tmp_path / "selection.yaml"
    path.write_text("policy:\n  name: threshold\n  params: {threshold: 1.5}\n")
    with pytest.raises(ConfigError, match=r"policy\.params\.threshold.*1\.5"):
        load_selection_config(path)
    path.write_text("policy:\n  name: threshold\n  params: {treshold: 0.5}\n")
    with pytest.raises(ConfigError, match=r"unknown key policy\.params\.treshold"):
        load_selection_config(path)
    path.write_text("weights: {classification: {margin: 0, disagreement: 0, flicker: 0, novelty: 0}}\n")
    with pytest.raises(ConfigError, match="classification: at least one weight"):
        load_selection_config(path)
    path.write_text("weights: {detection: {margin: 1.0}}\n")  # a classification part under detection
    with pytest.raises(ConfigError, match=r"unknown key weights\.detection\.margin"):
        load_selection_config(path)
    path.write_text("weights: {margin: 1.0, novelty: 0.5}\n")  # the flat form of earlier versions
    with pytest.raises(ConfigError, match=r"weights are given per task.*classification: \{margin"):
        load_selection_config(path)


# --------------------------------------------------------------------------- score and decisions


def test_value_score_is_the_weighted_mean_and_decisions_say_why():
    cfg = config(
        policy={"name": "threshold", "params": {"threshold": 0.4}},
        weights={"classification": {"margin": 1.0, "novelty": 3.0, "disagreement": 0.0, "flicker": 0.0}},
    )
    frame_result = result(margin=0.2, novelty=0.6)
    assert value_score(frame_result.scores, cfg.weights.classification) == pytest.approx((0.2 + 3 * 0.6) / 4)
    decision = Selector(cfg, "r1", LABELS).offer(IMAGE, frame_result, 0)
    assert decision.keep and decision.score == pytest.approx(0.5)
    assert decision.parts == pytest.approx({"margin": 0.05, "novelty": 0.45})
    assert sum(decision.parts.values()) == pytest.approx(decision.score)
    assert decision.threshold == 0.4 and decision.policy == "threshold" and "score >= threshold" in decision.reason
    assert set(decision.budget) == {"frame_tokens", "byte_tokens"}
    dropped = Selector(cfg, "r1", LABELS).offer(IMAGE, result(margin=0.1, novelty=0.1), 0)
    assert not dropped.keep and dropped.record is None and "score < threshold" in dropped.reason


def test_each_frame_is_weighed_by_its_own_tasks_score_parts():
    cfg = config(
        policy={"name": "threshold", "params": {"threshold": 0.0}},
        weights={
            "classification": {"margin": 1.0, "disagreement": 0.0, "flicker": 0.0, "novelty": 0.0},
            "detection": {"band": 1.0, "count_flicker": 3.0, "disagreement": 0.0, "novelty": 0.0},
        },
    )
    selector = Selector(cfg, "r1", LABELS)
    classified = selector.offer(IMAGE, result(margin=0.3), 0)
    assert classified.score == pytest.approx(0.3) and classified.parts == pytest.approx({"margin": 0.3})
    detected = result()
    detected.task = "detection"  # a detection result carries the detection task's own parts
    detected.scores = {"band": 0.2, "box_entropy_mean": 0.0, "box_entropy_max": 0.0, "disagreement": 0.9}
    detected.scores |= {"count_flicker": 0.6, "novelty": 0.9, "boxes": 3.0}  # figures behind the parts: not weighed
    decision = selector.offer(IMAGE, detected, PERIOD_NS)
    assert decision.score == pytest.approx((0.2 + 3 * 0.6) / 4)
    assert decision.parts == pytest.approx({"band": 0.05, "count_flicker": 0.45})
    unknown = result()
    unknown.task = "segmentation"
    with pytest.raises(ConfigError, match=r"no selection weights for task 'segmentation' \(known: classification"):
        selector.offer(IMAGE, unknown, 2 * PERIOD_NS)


def test_every_registered_task_has_its_weights_section_named_by_its_score_parts():
    from fleetloop_core.selection_config import ScoreWeights
    from fleetloop_core.tasks import TASKS

    assert set(ScoreWeights.model_fields) == set(TASKS)
    for name, task in TASKS.items():
        assert ScoreWeights.model_fields[name].annotation is task.weights_model
        assert tuple(task.weights_model.model_fields) == tuple(task.score_parts)
        assert isinstance(ScoreWeights().of(name), task.weights_model)
    with pytest.raises(ConfigError, match="no selection weights for task 'keypoints'"):
        ScoreWeights().of("keypoints")


def test_kept_record_carries_a_valid_sidecar_and_charges_the_byte_budget():
    cfg = config(policy={"name": "threshold", "params": {"threshold": 0.1}})
    selector = Selector(cfg, "robot-7", LABELS)
    image = distinct_image(1)
    decision = selector.offer(
        image,
        result(0.8, label=3, embedding=np.ones(4, np.float32) / 2),
        1_700_000_000 * 10**9,
        stream="front",
        site="site-2",
    )
    assert decision.keep and decision.record is not None
    before = selector.state()["byte_tokens"]
    encoded = decision.record.encode()
    assert decision.record.encode() is encoded  # encoded once
    sidecar = parse_sidecar(encoded.sidecar_json)
    assert sidecar.robot_id == "robot-7" and sidecar.stream == "front" and sidecar.site == "site-2"
    assert sidecar.prediction == 3 and sidecar.labels == list(LABELS) and sidecar.embedding == [0.5] * 4
    assert sidecar.decision.policy == "threshold" and sidecar.decision.score == pytest.approx(0.8)
    assert encoded.frame_key == f"frames/robot-7/2023-11-14/{sidecar.frame_sha256}.png"
    assert selector.state()["byte_tokens"] == pytest.approx(before - encoded.size_bytes, abs=1.0)
    image[:] = 0  # the record owns its pixels
    assert decision.record.image.any()


# --------------------------------------------------------------------------- budgets


def test_token_bucket_refills_by_stamp_and_ignores_time_going_backwards():
    bucket = TokenBucket(rate_per_hour=3600, capacity=5, tokens=0)
    bucket.refill(0)
    bucket.refill(2 * 10**9)
    assert bucket.tokens == pytest.approx(2.0)
    bucket.refill(1 * 10**9)
    assert bucket.tokens == pytest.approx(2.0)
    bucket.refill(100 * 10**9)
    assert bucket.tokens == 5


def test_frame_budget_caps_the_kept_rate():
    cfg = config(
        policy={"name": "threshold", "params": {"threshold": 0.0}}, budget={"frames_per_hour": 600, "burst_seconds": 60}
    )
    selector = Selector(cfg, "r", LABELS)
    frames = 6000  # 10 minutes at 10 Hz: 100 earned + 10 burst
    kept = sum(selector.offer(IMAGE, result(0.9), i * PERIOD_NS).keep for i in range(frames))
    assert 105 <= kept <= 111
    assert selector.stats.budget_limited == frames - kept


class _Arrivals:
    """The arrival clock of a camera's frames, set by the test."""

    def __init__(self):
        self.ns = 0

    def __call__(self):
        return self.ns


def _kept_over_ten_minutes(stamp_of, streams=("camera",)):
    """Frames kept of 10 minutes at 10 Hz (threshold 0, 600 frames an hour, 60 s burst: ~110), and how many
    frames the selector placed by their arrival."""
    cfg = config(
        policy={"name": "threshold", "params": {"threshold": 0.0}}, budget={"frames_per_hour": 600, "burst_seconds": 60}
    )
    arrivals = _Arrivals()
    selector = Selector(cfg, "r", LABELS, clock=arrivals)
    kept = 0
    for i in range(6000):
        arrivals.ns = 5 * 10**9 + i * PERIOD_NS
        stream = streams[i % len(streams)]
        kept += selector.offer(IMAGE, result(0.9), stamp_of(i, stream), stream=stream).keep
    return kept, selector.state()["frames_by_arrival"]


def test_a_camera_that_does_not_stamp_is_budgeted_by_the_frames_arrival():
    # every header stamp 0 (a driver that never sets it): the budget refills as the frames arrive instead
    # of never (it kept only its 10-frame burst before)
    kept, by_arrival = _kept_over_ten_minutes(lambda i, stream: 0)
    assert 105 <= kept <= 111 and by_arrival == 5999


def test_a_camera_clock_reset_does_not_stall_the_budget():
    # a camera that ran 10 h restarts with its clock at 0: its stamps go back 10 h, and the budget keeps
    # refilling (before: nothing earned until the new stamps passed the old ones, 10 h later; 59 kept)
    ten_hours = 36_000 * 10**9
    kept, by_arrival = _kept_over_ten_minutes(
        lambda i, stream: ten_hours + i * PERIOD_NS if i < 3000 else (i - 3000) * PERIOD_NS
    )
    assert 105 <= kept <= 111 and by_arrival == 1


def test_streams_whose_clocks_differ_share_one_budget_at_its_rate():
    offsets = {"front": 0, "rear": 3600 * 10**9}  # two cameras an hour apart, alternating frames
    kept, by_arrival = _kept_over_ten_minutes(lambda i, stream: offsets[stream] + i * PERIOD_NS, ("front", "rear"))
    assert 105 <= kept <= 111 and by_arrival == 0


def test_byte_budget_stops_keeping_once_spent():
    cfg = config(
        policy={"name": "threshold", "params": {"threshold": 0.0}},
        budget={"frames_per_hour": 10**6, "bytes_per_hour": 360_000, "burst_seconds": 10},
    )
    selector = Selector(cfg, "r", LABELS)  # 1,000 bytes of burst; each record is ~9 kB
    kept = []
    for i in range(50):
        decision = selector.offer(distinct_image(i), result(0.9), i * PERIOD_NS)
        if decision.keep:
            decision.record.encode()
            kept.append(i)
    assert kept == [0]  # the first record overdraws; 5 s earn only 500 bytes
    assert selector.stats.budget_limited == 49


def _shifted_stream(selector, frames, shift_at, low, high, seed=0):
    rng = np.random.default_rng(seed)
    kept = np.zeros(frames, bool)
    for i in range(frames):
        a, b = low if i < shift_at else high
        kept[i] = selector.offer(IMAGE, result(float(rng.beta(a, b))), i * PERIOD_NS).keep
    return kept


@pytest.mark.parametrize("low,high", [((2, 5), (5, 2)), ((5, 2), (2, 8))], ids=["scores-rise", "scores-fall"])
def test_adaptive_budget_converges_after_a_distribution_shift(low, high):
    budget_fraction = 0.05  # 1,800 frames/h of 36,000
    cfg = config(
        policy={"name": "adaptive_budget", "params": {"window": 1024}},
        budget={"frames_per_hour": 1800, "burst_seconds": 60},
    )
    selector = Selector(cfg, "r", LABELS)
    kept = _shifted_stream(selector, 8000, 3000, low, high)
    settled = kept[3000 + 2000 :].mean()  # within 2,000 frames of the shift
    assert abs(settled - budget_fraction) / budget_fraction <= 0.10
    assert abs(kept[1000:3000].mean() - budget_fraction) / budget_fraction <= 0.10
    threshold = selector.state()["threshold"]
    assert (threshold > 0.5) == (high == (5, 2))  # the quantile followed the scores


def test_fixed_threshold_does_not_follow_a_shift():
    # the contrast that makes the adaptive policy worth having
    cfg = config(policy={"name": "threshold", "params": {"threshold": 0.6}}, budget={"frames_per_hour": 10**6})
    kept = _shifted_stream(Selector(cfg, "r", LABELS), 4000, 2000, (2, 5), (5, 2))
    assert kept[2500:].mean() > 5 * kept[:2000].mean()


# --------------------------------------------------------------------------- dedup and random samples


def test_a_parked_robot_uploads_its_shelf_once():
    from fleetloop_sim import sim

    site = sim.make_site(0)
    frames = [f.image for f in sim.CameraStream(site, "r", seed=1, park_prob=1.0).frames(120)]
    cfg = selection_config(
        {
            "policy": {"name": "threshold", "params": {"threshold": 0.0}},
            "random_fraction": 0.0,
            "dedup": {"hash_max_distance": 8, "embedding_max_distance": -1},
        }
    )
    selector = Selector(cfg, "r", LABELS)
    shelf = frames[0]
    parked = [selector.offer(shelf, result(0.9), i * PERIOD_NS) for i in range(20)]
    assert [d.keep for d in parked] == [True] + [False] * 19
    assert all(d.duplicate and d.hash_distance == 0 for d in parked[1:])
    assert "near-duplicate" in parked[1].reason
    noisy = np.clip(shelf.astype(int) + np.random.default_rng(0).integers(-3, 4, shelf.shape), 0, 255).astype(np.uint8)
    assert selector.offer(noisy, result(0.9), 30 * PERIOD_NS).duplicate
    other = selector.offer(distinct_image(99), result(0.9), 31 * PERIOD_NS)
    assert other.keep and other.hash_distance > 8


def test_embedding_distance_catches_what_the_hash_misses_and_can_be_disabled():
    emb = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    close = np.array([1.0, 0.01, 0.0, 0.0], np.float32)
    far = np.array([0.0, 1.0, 0.0, 0.0], np.float32)
    base = {"policy": {"name": "threshold", "params": {"threshold": 0.0}}, "random_fraction": 0.0}
    selector = Selector(selection_config({**base, "dedup": {"hash_max_distance": -1, "embedding_max_distance": 0.01}}))
    assert selector.offer(distinct_image(1), result(0.9, embedding=emb), 0).keep
    assert selector.offer(distinct_image(2), result(0.9, embedding=close), PERIOD_NS).duplicate
    assert selector.offer(distinct_image(3), result(0.9, embedding=far), 2 * PERIOD_NS).keep
    off = Selector(selection_config({**base, "dedup": {"hash_max_distance": -1, "embedding_max_distance": -1}}))
    assert off.offer(distinct_image(1), result(0.9, embedding=emb), 0).keep
    assert off.offer(distinct_image(1), result(0.9, embedding=emb), PERIOD_NS).keep


def test_dedup_memory_is_bounded():
    base = {
        "policy": {"name": "threshold", "params": {"threshold": 0.0}},
        "random_fraction": 0.0,
        "dedup": {"memory": 3, "embedding_max_distance": -1},
    }
    selector = Selector(selection_config(base))
    for i in range(4):
        assert selector.offer(distinct_image(i), result(0.9), i * PERIOD_NS).keep
    # image 0 was forgotten (memory of 3), image 3 is remembered
    assert selector.offer(distinct_image(0), result(0.9), 10 * PERIOD_NS).keep
    assert selector.offer(distinct_image(3), result(0.9), 11 * PERIOD_NS).duplicate
    assert selector.state()["dedup_memory"] == 3


def test_random_fraction_is_kept_regardless_and_flagged():
    cfg = selection_config(
        {
            "policy": {"name": "threshold", "params": {"threshold": 1.0}},
            "random_fraction": 0.05,
            "random_priority": 0.97,
            "budget": {"frames_per_hour": 10**6},
            "seed": 3,
        }
    )
    selector = Selector(cfg, "r", LABELS)
    decisions = [selector.offer(distinct_image(i % 7), result(0.0), i * PERIOD_NS) for i in range(2000)]
    kept = [d for d in decisions if d.keep]
    assert 60 <= len(kept) <= 140  # 5 % of 2000, never dedup'd, never score-gated
    assert all(d.random and "random sample" in d.reason and d.record.priority == 0.97 for d in kept)
    assert selector.stats.random == len(kept)
    assert parse_sidecar(kept[0].record.encode().sidecar_json).decision.random is True


def test_random_samples_count_against_the_budget():
    cfg = selection_config(
        {
            "policy": {"name": "threshold", "params": {"threshold": 0.0}},
            "random_fraction": 0.5,
            "dedup": {"enabled": False},
            "budget": {"frames_per_hour": 360, "burst_seconds": 10},
        }
    )
    selector = Selector(cfg, "r", LABELS)
    kept = sum(selector.offer(IMAGE, result(0.9), i * PERIOD_NS).keep for i in range(3000))  # 5 minutes
    # 30 earned + 1 burst, + 1 burst random samples may borrow: never the 1,500 the fraction asks for
    assert 30 <= kept <= 30 + 1 + 1
    assert selector.stats.random > 0 and selector.stats.budget_limited > 2500


# --------------------------------------------------------------------------- other policies


def test_novelty_and_disagreement_policies_read_their_own_part():
    novelty = Selector(config(policy={"name": "novelty", "params": {"threshold": 0.5}}))
    assert novelty.offer(IMAGE, result(0.0, novelty=0.6), 0).keep
    assert not novelty.offer(IMAGE, result(0.9, novelty=0.4), PERIOD_NS).keep
    disagreement = Selector(config(policy={"name": "disagreement", "params": {"threshold": 0.2}}))
    assert disagreement.offer(IMAGE, result(0.0, disagreement=0.3), 0).keep
    assert not disagreement.offer(IMAGE, result(0.9, disagreement=0.1), PERIOD_NS).keep


def test_class_quota_counters_a_dominant_class():
    cfg = config(
        policy={
            "name": "class_quota",
            "params": {"threshold": 0.0, "max_share": 0.3, "window": 100, "shares": {"none": 0.05}},
        },
        budget={"frames_per_hour": 10**6},
    )
    selector = Selector(cfg, "r", LABELS)
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 10, 1, 2, 3], p=[0.5, 0.3, 0.1, 0.05, 0.05], size=3000)
    decisions = [selector.offer(IMAGE, result(0.9, label=int(c)), i * PERIOD_NS) for i, c in enumerate(labels)]
    kept = [int(c) for c, d in zip(labels, decisions) if d.keep]
    share = {c: kept.count(c) / len(kept) for c in set(kept)}
    assert share[0] <= 0.33 and share.get(10, 0.0) <= 0.07
    assert any("class quota reached" in d.reason for d in decisions)
    with pytest.raises(ConfigError, match="unknown class 'socks'"):
        Selector(config(policy={"name": "class_quota", "params": {"shares": {"socks": 0.1}}}), "r", LABELS)


def test_random_policy_flags_every_kept_frame():
    selector = Selector(
        config(policy={"name": "random", "params": {"fraction": 0.1}}, budget={"frames_per_hour": 10**6})
    )
    decisions = [selector.offer(IMAGE, result(0.0), i * PERIOD_NS) for i in range(1000)]
    kept = [d for d in decisions if d.keep]
    assert 60 <= len(kept) <= 140 and all(d.random for d in kept)


# --------------------------------------------------------------------------- run-time updates


def test_update_applies_validated_changes_in_every_spelling():
    selector = Selector(config(policy={"name": "threshold", "params": {"threshold": 0.9}}), "r", LABELS)
    assert not selector.offer(IMAGE, result(0.5), 0).keep
    new = selector.update(**{"policy.params.threshold": 0.4})
    assert new.policy.params["threshold"] == 0.4 and selector.config is new
    assert selector.offer(IMAGE, result(0.5), PERIOD_NS).keep
    selector.update(budget__frames_per_hour=120.0)
    selector.update(dedup={"memory": 64})
    assert selector.config.budget.frames_per_hour == 120.0 and selector.config.dedup.memory == 64
    assert selector.config.dedup.hash_max_distance == 8  # the rest of the section stays


def test_update_rejects_bad_values_and_changes_nothing():
    selector = Selector(config(policy={"name": "threshold", "params": {"threshold": 0.5}}))
    before = selector.config
    with pytest.raises(ConfigError, match=r"budget\.frames_per_hour.*-5"):
        selector.update(**{"budget.frames_per_hour": -5})
    with pytest.raises(ConfigError, match="unknown selection policy 'nope'"):
        selector.update(**{"policy.name": "nope"})
    with pytest.raises(ConfigError, match="unknown key budgt"):
        selector.update(**{"budgt.frames_per_hour": 5})
    assert selector.config is before


def test_switching_policy_starts_from_its_defaults():
    selector = Selector(config(policy={"name": "threshold", "params": {"threshold": 0.5}}))
    new = selector.update(**{"policy.name": "adaptive_budget"})
    assert new.policy.name == "adaptive_budget" and new.policy.params == {}
    both = selector.update(policy={"name": "novelty", "params": {"threshold": 0.2}})
    assert both.policy.params == {"threshold": 0.2}


def test_update_is_atomic_between_frames():
    selector = Selector(
        config(policy={"name": "threshold", "params": {"threshold": 0.25}}, budget={"frames_per_hour": 10**7})
    )
    seen, stop = [], threading.Event()

    def offer():
        i = 0
        while not stop.is_set():
            seen.append(selector.offer(IMAGE, result(0.5), i * PERIOD_NS).threshold)
            i += 1

    thread = threading.Thread(target=offer)
    thread.start()
    for k in range(200):
        selector.update(**{"policy.params.threshold": 0.75 if k % 2 else 0.25})
    stop.set()
    thread.join()
    assert set(seen) <= {0.25, 0.75} and len(seen) > 0


# --------------------------------------------------------------------------- the real cascade


def test_selector_on_the_real_cascade(test_models):
    from fleetloop_sim import sim
    from fleetloop_core.cascade import Cascade
    from fleetloop_core.inference import TierModel

    cascade = Cascade(TierModel.load(test_models["T4"]), TierModel.load(test_models["T3"]))
    stream = sim.CameraStream(sim.make_site(1), "robot-1", seed=2)
    selector = Selector(
        load_selection_config(Path(__file__).resolve().parents[2] / "config" / "selection.yaml"),
        "robot-1",
        cascade.edge.labels,
    )
    pairs = []
    for frame in stream.frames(150):
        pairs.append(
            (
                frame,
                selector.offer(
                    frame.image,
                    cascade.infer(frame.image, "front"),
                    frame.stamp_ns,
                    stream="front",
                    simulation={"label": frame.truth.label},
                ),
            )
        )
    kept = [(f, d) for f, d in pairs if d.keep]
    assert kept, "the burst budget lets the first valuable frames through"
    frame, decision = kept[0]
    sidecar = parse_sidecar(decision.record.encode().sidecar_json)
    assert set(sidecar.tier_outputs) <= {"T4", "T3"} and sidecar.model_versions["T4"] == cascade.edge.version
    assert sidecar.simulation.label == frame.truth.label and sidecar.stamp_ns == frame.stamp_ns
    assert all(d.policy == "adaptive_budget" and 0.0 <= d.score <= 1.0 for _, d in pairs)


# --------------------------------------------------------------------------- clips


def _clip_selector(frames=2, spacing=3, budget_share=1.0, frames_per_hour=36000.0):
    return Selector(
        config(
            policy={"name": "threshold", "params": {"threshold": 0.5}},
            clip={"frames": frames, "spacing": spacing, "budget_share": budget_share},
            budget={"frames_per_hour": frames_per_hour, "burst_seconds": 60},
        ),
        labels=LABELS,
    )


def test_a_kept_frame_opens_a_clip_of_its_track_every_nth_frame_up_to_k():
    selector = _clip_selector(frames=2, spacing=3)
    kept = []
    for i in range(12):
        score = 0.9 if i == 0 else 0.0  # only the first frame is worth a label on its own
        decision = selector.offer(distinct_image(i), result(score), i * PERIOD_NS, track_hint="cam@1-7")
        kept.append(decision.keep)
        if decision.keep and i:
            assert decision.reason.startswith("kept: clip frame") and "track cam@1-7" in decision.reason
    assert [i for i, k in enumerate(kept) if k] == [0, 3, 6]  # frames 3 and 6 of the track, then the clip is full
    assert selector.stats.clip == 2 and selector.stats.kept == 3


def test_a_clip_ends_with_its_track_and_clips_are_off_by_default():
    selector = _clip_selector(frames=4, spacing=1)
    assert selector.offer(distinct_image(0), result(0.9), 0, track_hint="t-1").keep
    assert selector.offer(distinct_image(1), result(0.0), PERIOD_NS, track_hint="t-1").keep
    assert not selector.offer(distinct_image(2), result(0.0), 2 * PERIOD_NS, track_hint="t-2").keep  # new item
    assert not selector.offer(distinct_image(3), result(0.0), 3 * PERIOD_NS, track_hint="t-1").keep  # clip closed
    plain = Selector(config(policy={"name": "threshold", "params": {"threshold": 0.5}}), labels=LABELS)
    plain.offer(distinct_image(0), result(0.9), 0, track_hint="t-1")
    assert not plain.offer(distinct_image(1), result(0.0), PERIOD_NS, track_hint="t-1").keep


def test_clip_frames_leave_the_rest_of_the_burst_to_new_candidates_and_are_deduplicated():
    # a burst of 10 frames (600 an hour, 60 s); clips may spend half of it
    selector = _clip_selector(frames=20, spacing=1, budget_share=0.5, frames_per_hour=600.0)
    decisions = [selector.offer(distinct_image(0), result(0.9), 0, track_hint="t-1")]
    decisions += [selector.offer(distinct_image(i), result(0.0), i, track_hint="t-1") for i in range(1, 15)]
    clip_kept = sum(d.keep for d in decisions[1:])
    assert clip_kept == 4  # 10 tokens - 1 for the anchor; clip frames stop at the 5-token reserve
    assert "budget spent" in decisions[-1].reason
    assert selector.offer(distinct_image(99), result(0.9), 16, track_hint="t-2").keep  # the reserve serves it
    deduped = Selector(
        selection_config(
            {
                "policy": {"name": "threshold", "params": {"threshold": 0.5}},
                "clip": {"frames": 3, "spacing": 1},
                "random_fraction": 0.0,
            }
        ),
        labels=LABELS,
    )
    deduped.offer(IMAGE, result(0.9), 0, track_hint="t-1")
    repeat = deduped.offer(IMAGE, result(0.0), PERIOD_NS, track_hint="t-1")  # the same picture again
    assert not repeat.keep and repeat.duplicate
