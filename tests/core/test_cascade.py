"""The tier cascade: T4 always, T3 when uncertain and within budget, disagreement when both ran."""

import numpy as np
import pytest

from fleetloop_sim import sim
from fleetloop_core.cascade import Cascade, CascadeConfig, EscalationLatency
from fleetloop_core.errors import ConfigError, ModelError
from fleetloop_core.inference import TierModel


@pytest.fixture(scope="module")
def tiers(test_models):
    return (
        TierModel.load(test_models["T4"], providers=("cpu",)),
        TierModel.load(test_models["T3"], providers=("cpu",)),
    )


@pytest.fixture(scope="module")
def frames(pool):
    return [f.image for f in sim.CameraStream(sim.make_site(0), "r", seed=0).frames(40)]


def test_never_escalates_when_threshold_is_one(tiers, frames):
    cascade = Cascade(*tiers, CascadeConfig(escalate_above=1.0))
    results = [cascade.infer(f) for f in frames]
    assert not any(r.escalated for r in results)
    assert {r.tier_used for r in results} == {"T4"}
    assert all(r.scores["disagreement"] == 0.0 for r in results)
    assert all(set(r.latency_s) == {"T4"} for r in results)


def test_escalates_uncertain_frames_and_records_disagreement(tiers, frames):
    edge, high = tiers
    cascade = Cascade(edge, high, CascadeConfig(escalate_above=0.0, latency_budget_ms=1000))
    results = [cascade.infer(f) for f in frames]
    assert all(r.escalated and r.tier_used == "T3" for r in results)
    for frame, r in zip(frames, results):
        assert set(r.latency_s) == {"T4", "T3"}
        assert set(r.tier_outputs) == {"T4", "T3"}
        assert np.allclose(r.probs, high.infer(frame).probs[0], atol=1e-5)
        assert 0.0 <= r.scores["disagreement"] <= 1.0
    assert any(r.scores["disagreement"] > 0 for r in results)


def test_escalation_follows_the_signal(tiers, frames):
    edge, high = tiers
    threshold = 0.6
    cascade = Cascade(
        edge, high, CascadeConfig(escalate_above=threshold, escalation_signal="entropy", latency_budget_ms=1000)
    )
    for frame in frames:
        r = cascade.infer(frame)
        edge_entropy = float(edge.infer(frame).uncertainty[0, 0])
        assert r.escalated == (edge_entropy > threshold)


def test_latency_budget_blocks_escalation(tiers, frames):
    cascade = Cascade(*tiers, CascadeConfig(escalate_above=0.0, latency_budget_ms=1e-6))
    assert not any(cascade.infer(f).escalated for f in frames[:10])


class _ScriptedLatency:
    """A real T3 whose measured latency is replaced by a script (the machine's load, made repeatable)."""

    def __init__(self, model, latencies_s):
        self._model, self._latencies = model, iter(latencies_s)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def infer(self, frame, color_order="RGB"):
        out = self._model.infer(frame, color_order)
        out.latency_s = next(self._latencies)
        return out


def test_one_slow_escalation_does_not_stop_escalation_for_good(tiers, frames):
    # the old estimate (an average refreshed only by escalations) latched after one slow run: no T3 until a swap
    edge, high = tiers
    slow_first = _ScriptedLatency(high, [0.5] + [0.001] * 1000)
    cascade = Cascade(edge, slow_first, CascadeConfig(escalate_above=0.0, latency_budget_ms=20.0))
    escalated = [cascade.infer(frames[i % len(frames)]).escalated for i in range(200)]
    probe = EscalationLatency.PROBE_EVERY  # the slow run, PROBE_EVERY - 1 skipped frames, then the probe
    assert escalated[0] and not any(escalated[1:probe]) and escalated[probe]
    assert all(escalated[probe:]), "escalation resumes once a probe measured T3 within the budget"
    # one slow run among fast ones changes nothing: the estimate is the median of the last runs
    spike = _ScriptedLatency(high, [0.001] * 3 + [0.5] + [0.001] * 1000)
    cascade = Cascade(edge, spike, CascadeConfig(escalate_above=0.0, latency_budget_ms=20.0))
    assert all(cascade.infer(frames[i % len(frames)]).escalated for i in range(60))
    # a T3 slow on every run stays skipped, measured again on one frame in PROBE_EVERY
    slow = _ScriptedLatency(high, [0.5] * 1000)
    cascade = Cascade(edge, slow, CascadeConfig(escalate_above=0.0, latency_budget_ms=20.0))
    count = sum(cascade.infer(frames[i % len(frames)]).escalated for i in range(1 + 3 * EscalationLatency.PROBE_EVERY))
    assert count == 4


def test_result_contents(tiers, frames):
    cascade = Cascade(*tiers, CascadeConfig(escalate_above=1.0, top_k=3))
    r = cascade.infer(frames[0], stream="cam0")
    assert r.label == int(np.argmax(r.probs)) and r.confidence == pytest.approx(float(r.probs.max()))
    assert [i for i, _ in r.top_k][0] == r.label and len(r.top_k) == 3
    assert [p for _, p in r.top_k] == sorted([p for _, p in r.top_k], reverse=True)
    assert set(r.scores) == {"entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty"}
    assert all(0.0 <= v <= 1.0 for v in r.scores.values())
    assert r.scores["novelty"] == 1.0  # first frame of a stream is new
    again = cascade.infer(frames[0], stream="cam0")
    assert again.scores["novelty"] == pytest.approx(0.0, abs=1e-5)  # the same frame again is not
    assert r.model_versions == {"T4": tiers[0].version, "T3": tiers[1].version}
    assert "T4" in r.embeddings


def test_streams_keep_separate_state(tiers, frames):
    cascade = Cascade(*tiers, CascadeConfig(escalate_above=1.0))
    cascade.infer(frames[0], stream="a")
    assert cascade.infer(frames[0], stream="b").scores["novelty"] == 1.0


def test_set_model_swaps_between_frames_and_checks_labels(tiers, frames, model_copy):
    edge, high = tiers
    cascade = Cascade(edge, None, CascadeConfig(escalate_above=0.0))
    assert not cascade.infer(frames[0]).escalated  # no T3: nothing to escalate to
    previous = cascade.set_model("escalation", high)
    assert previous is None and cascade.model_versions() == {"T4": edge.version, "T3": high.version}
    # a model with other labels cannot join the cascade
    import json

    directory = model_copy("T3")
    data = json.loads((directory / "manifest.json").read_text())
    data["labels"] = [f"x{i}" for i in range(len(data["labels"]))]
    (directory / "manifest.json").write_text(json.dumps(data))
    other = TierModel.load(directory, providers=("cpu",))
    with pytest.raises(ModelError, match="tiers disagree on labels"):
        cascade.set_model("escalation", other)
    assert cascade.escalation is high


def test_bad_config_is_a_clear_error(tmp_path):
    from fleetloop_core.config import load_config

    path = tmp_path / "cascade.yaml"
    path.write_text("escalate_above: 1.5\n")
    with pytest.raises(ConfigError, match=r"cascade.yaml: escalate_above: .*less than or equal to 1 \(got 1.5\)"):
        load_config(CascadeConfig, path)
    path.write_text("escalate_abov: 0.5\n")
    with pytest.raises(ConfigError, match="unknown key escalate_abov"):
        load_config(CascadeConfig, path)
    path.write_text("escalate_above: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(CascadeConfig, path)


def test_tracks_follow_frame_continuity(tiers, pool):
    # a new track starts exactly where a frame's T4 embedding departs from the previous frame's
    edge = tiers[0]
    stream = [f.image for f in sim.CameraStream(sim.make_site(2), "r", seed=4).frames(120)]
    embeddings = np.concatenate([edge.infer(f).embedding for f in stream])
    similarity = np.sum(embeddings[1:] * embeddings[:-1], axis=1)
    # a threshold halfway across the widest gap near the median: no frame sits on it (float32 vs float64 ties)
    ordered = np.sort(similarity)
    middle = len(ordered) // 2
    gaps = np.diff(ordered[middle - 10 : middle + 10])
    cut = middle - 10 + int(np.argmax(gaps))
    threshold = float(ordered[cut] + ordered[cut + 1]) / 2
    cascade = Cascade(*tiers, CascadeConfig(escalate_above=1.0, track_similarity=threshold))
    tracks = [cascade.infer(f, stream="cam").track for f in stream]
    changed = [a != b for a, b in zip(tracks, tracks[1:])]
    assert changed == list(similarity < threshold)
    assert any(changed) and not all(changed)
    same_frame = Cascade(*tiers, CascadeConfig(escalate_above=1.0, track_similarity=0.99))
    first = same_frame.infer(stream[0], stream="x").track
    assert same_frame.infer(stream[0], stream="x").track == first  # the same frame again: same track
    assert same_frame.infer(stream[0], stream="other").track != first  # tracks are per stream


def test_memory_reports_similarity_to_previous_frame():
    from fleetloop_core.uncertainty import EmbeddingMemory

    memory = EmbeddingMemory(3, capacity=2, unit_inputs=True)
    memory.score(np.array([1.0, 0.0, 0.0], np.float32))
    assert memory.last_similarity is None
    memory.score(np.array([0.0, 1.0, 0.0], np.float32))
    assert memory.last_similarity == pytest.approx(0.0)
    memory.score(np.array([0.0, 1.0, 0.0], np.float32))
    assert memory.last_similarity == pytest.approx(1.0)
    memory.score(np.array([0.6, 0.8, 0.0], np.float32))  # ring wrapped: previous is still [0, 1, 0]
    assert memory.last_similarity == pytest.approx(0.8)
