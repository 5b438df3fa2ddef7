"""GET /jobs: the caller's recent jobs (core/jobstore/owners.py keeps the list)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.browse_schemas import JobList
from app.deps import CallerDep
from app.routes import error_responses
from app.routes.jobs import StoreDep, job_info, redis_errors
from app.routes.jobs_openapi import EXAMPLE_JOB
from core.jobstore.owners import recent_jobs

router = APIRouter(tags=["jobs"])

MAX_LISTED = 100


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's recent jobs, newest first (those that have not expired)",
    responses={
        200: {"content": {"application/json": {"example": {"jobs": [{**EXAMPLE_JOB, "status": "running"}]}}}},
        **error_responses("unauthorized", "validation_error", "redis_unavailable"),
    },
)
async def list_jobs(
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED, description="at most this many jobs")] = 20,
) -> JobList:
    async with redis_errors():
        jobs = await recent_jobs(store, caller, limit)
    return JobList(jobs=[job_info(job, request) for job in jobs])
