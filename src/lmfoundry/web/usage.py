"""The usage page and its CSV export: tokens, requests and cost by target, deployment, key,
day or model."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio.from_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.api.usage import usage as usage_report
from lmfoundry.errors import InvalidRequest
from lmfoundry.metering.models import GROUPS, NUMBERS, UsageRow
from lmfoundry.web.render import SECURITY_HEADERS, StudioRoute, render

router = APIRouter(route_class=StudioRoute, include_in_schema=False)


def _day(field: str, value: str | None, plus: int = 0) -> datetime | None:
    """A `YYYY-MM-DD` from a date field as a UTC midnight (`plus` days later)."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field} must be a date like 2026-11-22.", param=field) from exc
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=plus)


def _report(
    access: Any, plat: Any, group_by: str, start: str | None, end: str | None
) -> list[UsageRow]:
    if group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}.", param="group_by")
    grouping: Any = group_by  # one of GROUPS, the API's Literal
    # The form's end date is inclusive; the API's `end` is exclusive.
    return usage_report(
        access, plat, grouping, _day("start", start), _day("end", end, plus=1), None, None
    )


@router.get("/projects/{project}/usage")
def usage_page(
    request: Request,
    access: ProjectDep,
    plat: PlatformDep,
    group_by: str = "target",
    start: str | None = None,
    end: str | None = None,
) -> Response:
    errors: dict[str, str] = {}
    rows: list[UsageRow] = []
    daily: list[UsageRow] = []
    try:
        rows = _report(access, plat, group_by, start, end)
        daily = rows if group_by == "day" else _report(access, plat, "day", start, end)
    except InvalidRequest as exc:
        errors[exc.param or "group_by"] = exc.message
    query = urlencode(
        {k: v for k, v in {"group_by": group_by, "start": start, "end": end}.items() if v}
    )
    # this sync route runs in a worker thread; flow calls are counted in the async store
    quotas = anyio.from_thread.run(plat.project_quotas.view_async, access)
    return render(
        request,
        "usage.html",
        access=access,
        section="usage",
        rows=[row.model_dump() for row in rows],
        daily=[row.model_dump() for row in daily],
        group_by=group_by,
        groups=GROUPS,
        columns=GROUPS.get(group_by, []),
        start=start or "",
        end=end or "",
        errors=errors,
        csv_url=f"/projects/{access.project}/usage.csv?{query}",
        quotas=quotas.quotas,
        is_admin=access.principal.is_admin,
    )


@router.get("/projects/{project}/usage.csv")
def usage_csv(
    access: ProjectDep,
    plat: PlatformDep,
    group_by: str = "target",
    start: str | None = None,
    end: str | None = None,
) -> Response:
    rows = _report(access, plat, group_by, start, end)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(GROUPS[group_by] + NUMBERS)
    for row in rows:
        writer.writerow([getattr(row, c) for c in GROUPS[group_by] + NUMBERS])
    name = f"usage-{access.project}-by-{group_by}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'},
    )
