"""Airflow UI plugin: Browse -> "infinstruct runs" shows each run's funnel, gates and release.

Served by the Airflow API server at /infinstruct/ (a FastAPI app) to logged-in users; data comes from
the project's metadata store through `infinstruct.store.run_report`.
"""
from __future__ import annotations

from html import escape

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

# plugin apps are not behind Airflow's auth by themselves: ask for the UI's login (cookie or bearer token)
app = FastAPI(title="infinstruct", dependencies=[Depends(get_user)])

STYLE = """<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}code{font-size:.9em}</style>"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><title>{escape(title)}</title>{STYLE}</head><body><h1>{escape(title)}</h1>{body}</body></html>")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@app.get("/", response_class=HTMLResponse)
def runs() -> HTMLResponse:
    from infinstruct.store.db import get_engine
    from infinstruct.store.run_report import recent_runs

    rows = [[f'<a href="run/{escape(r["run_id"])}">{escape(r["run_id"])}</a>', escape(r["dataset"]),
             f'<span class="{"ok" if r["status"] == "succeeded" else "bad" if r["status"] == "failed" else ""}">{escape(r["status"])}</span>',
             escape(str(r["started_at"])[:19]), str(r["partitions"]),
             f'<span class="bad">{r["failed_gates"]}</span>' if r["failed_gates"] else "0",
             f'v{r["version"]:04d}' if r["version"] else ""] for r in recent_runs(get_engine())]
    return _page("infinstruct runs", _table(["run", "dataset", "status", "started", "partitions", "failed gates", "release"], rows))


@app.get("/run/{run_id:path}", response_class=HTMLResponse)
def run(run_id: str) -> HTMLResponse:
    from infinstruct.store.db import get_engine
    from infinstruct.store.run_report import recent_runs, run_funnel, run_gates

    engine = get_engine()
    if not any(r["run_id"] == run_id for r in recent_runs(engine, limit=10_000)):
        raise HTTPException(status_code=404, detail=f"no run {run_id!r} in the infinstruct store")
    funnel = [[escape(f["source"]), str(f["lines"]), str(f["quarantined"]), str(f["dropped"]), f'<b>{f["kept"]}</b>',
               "<br>".join(f"<code>{escape(reason)}</code> {n}" for reason, n in f["reasons"].items())]
              for f in run_funnel(engine, run_id)]
    gates = [[escape(g["gate"]), escape(g["scope"]), '<span class="ok">passed</span>' if g["success"] else '<span class="bad">FAILED</span>',
              f'{g["statistics"].get("successful_expectations")}/{g["statistics"].get("evaluated_expectations")}',
              "<br>".join(f"<code>{escape(str(f['expectation']))}</code>({escape(str(f.get('column') or ''))}): "
                          f"{escape(str(f['unexpected_count']))} e.g. {escape(str(f['sample']))}" for f in g["failures"])]
             for g in run_gates(engine, run_id)]
    body = ("<h2>Funnel per source</h2>" + _table(["source", "lines", "quarantined", "dropped", "kept", "reasons"], funnel)
            + "<h2>Quality gates</h2>" + _table(["gate", "scope", "result", "expectations met", "failures"], gates)
            + '<p><a href="../">all runs</a></p>')
    return _page(f"run {run_id}", body)


class InfinstructPlugin(AirflowPlugin):
    name = "infinstruct"
    fastapi_apps = [{"app": app, "url_prefix": "/infinstruct", "name": "infinstruct runs"}]
    external_views = [{"name": "infinstruct runs", "href": "infinstruct/", "destination": "nav",
                       "category": "browse", "url_route": "infinstruct_runs"}]
