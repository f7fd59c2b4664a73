"""The cloud loop's pieces on their own: the pure round summary, the task registry, the review's
phase table, and the rule that no step module reaches the simulated world except through loop.world."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.config import load_cost_model
from fleetloop_cloud.costs import compute_dollars
from fleetloop_cloud.loop import review
from fleetloop_cloud.loop.summary import (
    STEPS,
    RoundFacts,
    audit_passes,
    by_purpose,
    compute_by_step,
    frames_section,
    label_sources,
)
from fleetloop_cloud.loop.tasks import CLOUD_TASKS, cloud_task_named
from fleetloop_cloud.loop.world import WORLDS, open_world

LOOP = Path(__file__).resolve().parents[2] / "cloud" / "fleetloop_cloud" / "loop"


def _task(purpose, seconds, dollars, frame_id="f", answer=None):
    return SimpleNamespace(purpose=purpose, seconds=seconds, dollars=dollars, frame_id=frame_id, answer=answer)


def test_compute_by_step_prices_cpu_time_and_a_sagemaker_job_by_its_instance_time():
    model = load_cost_model()
    info = {step: {} for step in STEPS}
    info["ingest"] = {"cpu_seconds": 10.0}
    info["train"] = {"cpu_seconds": 1.0, "job_cpu_seconds": 5.0, "instance_seconds": 3600.0}
    compute = compute_by_step(info, model)
    assert list(compute) == list(STEPS)
    assert compute["ingest"] == {
        "cpu_seconds": 10.0,
        "gpu_seconds": 0.0,
        "dollars": round(compute_dollars(model, 10.0), 6),
    }
    assert compute["train"]["cpu_seconds"] == 6.0
    assert compute["train"]["dollars"] == round(model.cpu_instance.usd_per_hour, 6)
    assert compute["review"]["dollars"] == 0.0


def test_by_purpose_sums_tasks_with_the_task_counts_in_order():
    tasks = [_task("review", 2.0, 0.1, answer=[1, 2]), _task("review", 3.0, 0.2, answer=[1]), _task("audit", 1.0, 0.05)]
    out = by_purpose(tasks, lambda t: {"boxes": len(t.answer or [])})
    assert out == {
        "review": {"tasks": 2, "boxes": 3, "seconds": 5.0, "dollars": pytest.approx(0.3)},
        "audit": {"tasks": 1, "boxes": 0, "seconds": 1.0, "dollars": 0.05},
    }
    assert list(out["review"]) == ["tasks", "boxes", "seconds", "dollars"]


def test_label_sources_count_an_audited_label_under_the_route_that_accepted_it():
    labels = {
        "a": SimpleNamespace(source="human"),
        "b": SimpleNamespace(source="human"),
        "c": SimpleNamespace(source="auto"),
    }
    facts = RoundFacts(tasks=[], labels=labels, audited_source={"b": "propagated"})
    assert label_sources(facts, ("human", "auto", "propagated")) == {"human": 1, "auto": 1, "propagated": 1}


def test_audit_passes_drop_task_ids_and_sources_and_the_final_pass_is_the_last_that_measured():
    review_info = {
        "audit_passes": [
            {"pass": 1, "tasks": [1, 2], "sources": {"1": "auto"}, "confidences": {"1": 0.99}, "frames": 2},
            {"pass": 2, "tasks": [], "frames": 0},
        ]
    }
    passes, final = audit_passes(review_info)
    assert passes == [{"pass": 1, "frames": 2}, {"pass": 2, "frames": 0}]
    assert final == {"pass": 1, "frames": 2}
    assert audit_passes({}) == ([], None)


def test_frames_section_reads_the_ingest_and_review_records():
    info = {"ingest": {"ingested": 5, "quarantined": {"k": "why"}, "waiting_for_sidecar": ["x", "y"]}, "review": {}}
    assert frames_section(info) == {
        "ingested": 5,
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "quarantined": 1,
        "waiting_for_sidecar": 2,
        "pending_review": 0,
    }


def test_task_and_world_registries_name_the_known_ones():
    assert set(CLOUD_TASKS) == {"classification", "detection"}
    with pytest.raises(ConfigError, match="unknown task 'segmentation'.*known: classification, detection"):
        cloud_task_named("segmentation")
    assert "simulated" in WORLDS
    with pytest.raises(ConfigError, match="unknown world 'mars'"):
        open_world("mars")


def test_the_review_phases_every_task_runs_are_a_table():
    assert review.PHASES == {
        "calibration": review.calibration,
        "review": review.review,
        "audit": review.audit,
        "check": review.check,
    }


@pytest.mark.parametrize(
    "module", ["core", "ingest", "autolabel", "review", "train", "evaluate", "register", "summary"]
)
def test_no_step_module_imports_the_simulated_world(module):
    tree = ast.parse((LOOP / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module or ""}
    assert not {name for name in imported if ".sim" in name or name.endswith("simfleet")}
