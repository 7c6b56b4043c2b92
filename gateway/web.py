"""The web console, served by the gateway from gateway/static/ (plain HTML, CSS and JS: no CDN, no build).

Pages: `/` the command-center wall (live hits over /api/v1/events), `/analyst` the history pages
(trail, hits between regions, time-to-hit; exports), `/queue`, `/scorecard` (per agency and month: the
workflows' deadlines kept, a table and an SVG chart, CSV export), `/login`. A page needs a valid session
cookie (POST /api/v1/session), checked here on the server: without one the browser is sent to
`/login?next=...`. Every page carries a Content-Security-Policy that allows nothing but this
gateway, so the console works with no internet and no script from elsewhere can run in it.

Also registered here: the export route (gateway.export) and `/api/v1/codes` (the region code table
with approximate places, offences and branches: labels and the map plot).
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "wall.html", "/analyst": "analyst.html", "/queue": "queue.html",  # /queue: the workflow queue (gateway.workflow_api)
         "/scorecard": "scorecard.html"}  # the accountability scorecard (named query scorecard; docs/workflows.md)
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def region_places() -> dict[str, dict]:
    """Region code -> {name, parent, level, lat, lon}: the code table (schemas/codes/regions.csv) with the
    console's approximate places (gateway/static/places.csv); a region without a place takes its parent's."""
    from schemas.regions import CODES

    with open(CODES / "regions.csv", encoding="utf-8", newline="") as f:
        table = {r["code"]: {"name": r["name"], "parent": r["parent"] or None, "level": r["level"]}
                 for r in csv.DictReader(f)}
    with open(STATIC / "places.csv", encoding="utf-8", newline="") as f:
        places = {r["code"]: (float(r["lat"]), float(r["lon"])) for r in csv.DictReader(f)}
    for code, region in table.items():
        at, seen = code, set()
        while at and at not in places and at not in seen:
            seen.add(at)
            at = (table.get(at) or {}).get("parent") or (at[:2] + "0000" if at[2:] != "0000" else None)
        region["lat"], region["lon"] = places.get(at, (None, None))
    return table


def register(app, ctx) -> None:
    from gateway import export
    from gateway.app import SESSION_COOKIE
    from identity.tokens import TokenRejected

    export.register(app, ctx)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def logged_in(request: Request) -> bool:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return False
        try:
            ctx.services.auth.identify(token)
        except (TokenRejected, ValueError):
            return False
        return True

    def page(name: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    def console_page(path: str, name: str):
        def serve(request: Request):
            if not logged_in(request):
                return RedirectResponse(f"/login?next={quote(path)}", status_code=303, headers=PAGE_HEADERS)
            return page(name)
        serve.__name__ = f"console_{name.split('.')[0]}"
        app.get(path, include_in_schema=False)(serve)

    for path, name in PAGES.items():
        console_page(path, name)

    @app.get("/login", include_in_schema=False)
    def login_page():
        return page("login.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/api/v1/codes", tags=["session"])
    def codes():
        """The shared code tables as the console shows them: regions (GB/T 2260 names, parents, levels, with
        approximate places for plotting), offences and branches (Chinese names). No personal data."""
        from schemas.regions import load_branches, load_offences

        return JSONResponse({"regions": region_places(), "offences": load_offences(), "branches": load_branches()},
                            headers={"Cache-Control": "max-age=3600"})
