"""Tuning views: routing (risk-coverage, target accuracy -> threshold, save) and robots (replay sweeps, uploads)."""

from __future__ import annotations

import logging
import re
from typing import Optional

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleetloop_cloud.review import overrides, plots, tuning, web
from fleetloop_cloud.review.errors import NotFound, ReviewError

log = logging.getLogger("fleetloop_cloud.review")
router = APIRouter()
PRESETS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
SWEEP_ID = r"[0-9a-f]{12}"


# ------------------------------------------------------------------------------------ routing
def _routing_data(request: Request):
    # the sample and the pool's confidences do not depend on the target: computed once per ttl
    pool = web.db(request).pool
    teachers = web.teachers(request)
    sample = tuning.routing_sample(pool, teachers)
    confidence, agree = tuning.pool_confidences(pool, teachers)
    loop = None
    if teachers.round is not None:
        _, info = pool.step(teachers.round, "review")
        loop = info.get("threshold")
    return sample, confidence, agree, float(pool.get("threshold_floor", 0.0)), loop


def _cached_routing_data(request: Request):
    st = web.state(request)
    return st.routing.get(lambda: _routing_data(request), st.clock())


def _routing(request: Request, target: float):
    sample, confidence, agree, floor, loop = _cached_routing_data(request)
    choice = tuning.choose(sample, web.state(request).config, target, floor, confidence, agree)
    return (
        choice,
        {
            "frames": len(sample.frame_ids),
            "agree": int(sample.agree.sum()),
            "accuracy": round(float(sample.correct.mean()), 4) if len(sample.correct) else None,
        },
        loop,
    )


@router.get("/tuning/routing", response_class=HTMLResponse)
def routing_page(request: Request, target: Optional[str] = None, saved: int = 0):
    session = web.user(request)
    st = web.state(request)
    value = tuning.parse_target(target, st.config.routing.target_accuracy)
    choice, sample, loop = _routing(request, value)
    saved_target = overrides.read_overrides(st.overrides_path).get("routing", {}).get("target_accuracy")
    return web.page(
        request,
        "routing.html",
        session,
        target=value,
        choice=choice.to_dict(),
        sample=sample,
        loop=loop,
        teachers=web.teachers(request),
        saved=bool(saved),
        saved_target=saved_target,
        overrides_path=web.shown_path(st.overrides_path),
        config_target=st.config.routing.target_accuracy,
        min_validation=st.config.routing.min_validation,
        presets=PRESETS,
    )


@router.post("/tuning/routing")
def routing_save(request: Request, target: str = Form(...), csrf: str = Form(...)):
    session = web.writer(request, csrf)
    st = web.state(request)
    value = tuning.parse_target(target, st.config.routing.target_accuracy)
    choice, _, _ = _routing(request, value)
    implied = {
        "threshold": choice.threshold.to_dict()["value"],
        "validation coverage": round(choice.validation_coverage, 4),
        "pool auto-accept fraction": None if choice.pool_fraction is None else round(choice.pool_fraction, 4),
    }
    overrides.save_target_accuracy(st.overrides_path, st.config, value, session.annotator, implied)
    log.info("%s saved routing.target_accuracy=%s to %s", session.annotator, value, st.overrides_path)
    return RedirectResponse(f"/tuning/routing?target={value}&saved=1", status_code=303)


@router.get("/plots/risk_coverage.png")
def risk_coverage_png(request: Request, target: Optional[str] = None):
    web.user(request)
    st = web.state(request)
    value = tuning.parse_target(target, st.config.routing.target_accuracy)
    choice, _, loop = _routing(request, value)
    sample = _cached_routing_data(request)[0]
    curve = tuning.risk_coverage(sample.confidence, sample.correct, sample.agree, st.config.routing.bound_z)
    loop_value = (loop or {}).get("value")
    return Response(
        plots.risk_coverage_png(curve, choice, loop_value, st.config.routing.min_validation),
        media_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


# ------------------------------------------------------------------------------------ robots
def _sweeps(request: Request) -> list[tuning.SweepFile]:
    st = web.state(request)
    return tuning.find_sweeps([*st.settings.replay_dirs, st.uploads])


def _store_bytes(request: Request):
    st = web.state(request)
    return st.store_bytes.get(
        lambda: (
            tuning.safe_store_bytes(st.frame_cache().store, st.config.ingest.prefix)
            if st.frame_cache().store is not None
            else (None, "no store configured")
        ),
        st.clock(),
    )


@router.get("/tuning/robots", response_class=HTMLResponse)
def robots_page(request: Request, sweep: Optional[str] = None):
    session = web.user(request)
    files = _sweeps(request)
    chosen, parsed, problem = None, None, None
    if sweep is not None and not re.fullmatch(SWEEP_ID, sweep):
        raise ReviewError(f"sweep: expected a 12-character id (got {sweep!r})")
    if files:
        try:
            chosen, parsed = tuning.read_sweep(files, sweep or files[0].id)
        except NotFound:
            raise
        except ReviewError as exc:
            problem = str(exc)
    store_bytes, store_problem = _store_bytes(request)
    stats = tuning.robot_stats(web.db(request).pool, store_bytes)
    return web.page(
        request,
        "robots.html",
        session,
        files=files,
        chosen=chosen,
        sweep=parsed,
        problem=problem,
        stats=stats,
        store_problem=store_problem,
        replay_dirs=web.state(request).settings.replay_dirs,
    )


@router.post("/tuning/robots/upload")
async def robots_upload(request: Request, csrf: str = Form(...), file: UploadFile = File(...)):
    web.writer(request, csrf)
    st = web.state(request)
    data = await file.read(st.settings.max_upload_bytes + 1)
    entry = tuning.store_upload(st.uploads, data, st.settings.max_upload_bytes)
    return RedirectResponse(f"/tuning/robots?sweep={entry.id}", status_code=303)


@router.get("/plots/sweep/{sweep}.png")
def sweep_png(request: Request, sweep: str):
    web.user(request)
    if not re.fullmatch(SWEEP_ID, sweep):
        raise NotFound(f"no replay sweep {sweep!r}")
    _, parsed = tuning.read_sweep(_sweeps(request), sweep)
    return Response(plots.sweep_png(parsed), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/plots/robots.png")
def robots_png(request: Request):
    web.user(request)
    store_bytes, _ = _store_bytes(request)
    return Response(
        plots.robots_png(tuning.robot_stats(web.db(request).pool, store_bytes)),
        media_type="image/png",
        headers={"Cache-Control": "no-store"},
    )
