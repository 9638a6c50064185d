"""`create_app(context)`: the JSON API under /api, its schema at /openapi.json, the pages at /.

Every request passes `guard.Guard` first (Host, Origin, the launch's token; see web/guard.py).

FastAPI's /docs and /redoc would load Swagger from a CDN, so they are off; nothing the app
serves loads anything from the internet. The pages are static files (written by the web-ui
build into static/), served as they are.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from sterling import __version__
from sterling.web import errors
from sterling.web.context import WebContext
from sterling.web.guard import Guard, GuardSettings
from sterling.web.routes import account, contracts, explorer, jobs, market, provider

STATIC = Path(__file__).resolve().parent / "static"

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sterling</title></head>
<body><h1>Sterling</h1><p>The pages are not built yet: run <code>make</code>.
The JSON API is under <a href="/api/status">/api</a>,
its schema at <a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
"""


API_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sterling API</title>
<style>body{{font:14px sans-serif;margin:2em}}td{{padding:.2em .8em;vertical-align:top}}</style></head>
<body><h1>Sterling API</h1><p>The machine-readable schema is <a href="/openapi.json">/openapi.json</a>.</p>
<table>{rows}</table></body></html>
"""


def ensure_static(folder: Path = STATIC) -> Path:
    """The static folder, with a placeholder index.html only if the pages have not been written."""
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.html"
    if not index.exists():
        try:
            with open(index, "x", encoding="utf-8") as fh:
                fh.write(PLACEHOLDER)
        except FileExistsError:
            pass  # written meanwhile by the pages' build: theirs wins
    return folder


def create_app(
    context: WebContext,
    *,
    static_dir: Path | None = None,
    token: str | None = None,
    port: int | None = None,
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The app over a ready `context` (its chain connected, its Marketplace found).

    Only requests carrying `token` (None: a fresh one, read back at `app.state.guard.token`) are
    served, under a loopback name or one of `allowed_hosts`, on `port` (None: any port).
    """
    app = FastAPI(
        title="Sterling",
        version=__version__,
        description="A marketplace that sells the use of private data, never the data. "
        "The enclave here is a SIMULATION wherever /api/status says so.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    app.state.guard = GuardSettings.build(token=token, port=port, allowed_hosts=allowed_hosts)
    errors.install(app)
    app.add_middleware(Guard, settings=app.state.guard)  # added last, so it is outermost
    for module in (market, contracts, jobs, provider, account, explorer):
        app.include_router(module.router, prefix="/api")
    folder = ensure_static(static_dir or STATIC)
    app.mount("/static", StaticFiles(directory=folder), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(folder / "index.html", media_type="text/html")

    @app.get("/api-docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        """Every route of /openapi.json with its summary, on one local page (Swagger would need a CDN)."""
        rows = []
        for path, item in app.openapi()["paths"].items():
            for method, op in item.items():
                summary = html.escape(str(op.get("description") or op.get("summary") or "").split("\n\n")[0])
                rows.append(
                    f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td><td>{summary}</td></tr>"
                )
        return HTMLResponse(API_DOCS.format(rows="\n".join(rows)))

    return app
