"""Our IoT Jobs service's store: a staged rollout (``jobExecutionsRolloutConfig.maximumPerMinute``) releases
the executions over time, and a cancel reaches the things not released yet."""

from fleetloop_core.contracts import iot_jobs

from fleetloop_cloud.fleet_jobs import RolloutConfig
from fleetloop_cloud.job_service_mqtt import StoreJobs
from fleetloop_cloud.job_store import JobStore


def test_a_staged_rollout_releases_executions_at_the_configured_rate(monkeypatch):
    clock = {"now": 1_800_000_000}
    monkeypatch.setattr(iot_jobs, "now_s", lambda: clock["now"])
    jobs = StoreJobs(JobStore())
    things = [f"robot-{i}" for i in range(5)]
    jobs.create_job("fleet", things, {"operation": "fleetloop.deploy_model"}, RolloutConfig(maximum_per_minute=30))

    def released() -> list[str]:
        return [t for t in things if jobs.store.next_pending(t) is not None]

    assert released() == ["robot-0"]  # 30 a minute: one every 2 s
    assert jobs.store.things_with_pending() == ["robot-0"] and jobs.store.pending("robot-1") == []
    clock["now"] += 2
    assert released() == ["robot-0", "robot-1"]
    clock["now"] += 3
    assert released() == things[:3]
    # an abort now: the things not released yet never see the job
    assert jobs.cancel_job("fleet", "abort") == things  # every QUEUED execution, released or not
    clock["now"] += 60
    assert released() == [] and {s.status for s in jobs.executions("fleet").values()} == {"CANCELED"}


def test_without_a_rate_every_execution_is_released_at_once():
    store = JobStore()
    store.create_job("all", ["a", "b", "c"], {"operation": "x"})
    assert store.things_with_pending() == ["a", "b", "c"]
