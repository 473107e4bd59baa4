"""Airflow UI plugin: Browse -> "infinstruct runs" shows each run's funnel, gates and release; "infinstruct
synthesis" each Phase-2 run's children by outcome and operation, its LLM calls and cost, and its diagnosis.

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
             f'<span class="{"ok" if r["status"] == "succeeded" else "bad" if r["status"] == "failed" else ""}"'
             f' title="{escape(r["end_reason"] or "")}">{escape(r["status"])}</span>',
             escape(str(r["started_at"])[:19]), str(r["partitions"]),
             f'<span class="bad">{r["failed_gates"]}</span>' if r["failed_gates"] else "0",
             f'v{r["version"]:04d}' if r["version"] else ""] for r in recent_runs(get_engine())]
    return _page("infinstruct runs", _table(["run", "dataset", "status", "started", "partitions", "failed gates", "release"], rows)
                 + '<p><a href="synthesis/">synthesis runs (Phase 2)</a></p>')


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


@app.get("/synthesis/", response_class=HTMLResponse)
def synthesis_runs() -> HTMLResponse:
    from infinstruct.store.db import get_engine
    from infinstruct.synth.report import recent_synthesis_runs

    rows = [[f'<a href="run/{escape(r["run_id"])}">{escape(r["run_id"])}</a>', escape(r["dataset"]),
             f'v{r["release_version"]:04d}', _status(r["status"]), escape(str(r["started_at"])[:19]), str(r["seeds"]),
             str(r["children"]), f'<b>{r["kept"]}</b>', f'v{r["version"]:04d}' if r["version"] else ""]
            for r in recent_synthesis_runs(get_engine())]
    return _page("infinstruct synthesis runs", _table(
        ["run", "dataset", "from release", "status", "started", "seeds", "children", "kept", "synthetic release"], rows)
        + '<p><a href="../">curation runs</a></p>')


@app.get("/synthesis/run/{run_id:path}", response_class=HTMLResponse)
def synthesis_run(run_id: str) -> HTMLResponse:
    from infinstruct.store.db import get_engine
    from infinstruct.store.run_report import run_gates
    from infinstruct.synth.report import synthesis_summary

    engine = get_engine()
    summary = synthesis_summary(engine, run_id)
    if summary is None:
        raise HTTPException(status_code=404, detail=f"no synthesis run {run_id!r} in the infinstruct store")
    outcomes = [[f"<code>{escape(o)}</code>", str(n)] for o, n in summary["outcomes"]]
    operations = [[escape(o["operation"]), str(o["round"]), str(o["children"]), f'<b>{o["kept"]}</b>',
                   f'{o["mean_reward"]:.1f}' if o["mean_reward"] is not None else ""] for o in summary["operations"]]
    calls = [[escape(c["role"]), str(c["calls"]), str(c["not_ok"]), f'{c["prompt_tokens"]:,}', f'{c["completion_tokens"]:,}',
              f'{c["cost_usd"]:.4f}' if c["cost_usd"] is not None else "", str(c["mean_latency_ms"])] for c in summary["calls"]]
    diagnosis = [[escape(d["category"]), str(d["graded"]), str(d["failed"]), f'{d["fail_rate"]:.2f}',
                  '<span class="bad">weak</span>' if d["weak"] else ""] for d in summary["diagnosis"]]
    gates = [[escape(g["gate"]), '<span class="ok">passed</span>' if g["success"] else '<span class="bad">FAILED</span>',
              f'{g["statistics"].get("successful_expectations")}/{g["statistics"].get("evaluated_expectations")}']
             for g in run_gates(engine, run_id)]
    body = (f'<p>{escape(summary["dataset"])} v{summary["release_version"]:04d} ({escape(summary["release_path"])}): '
            f'{_status(summary["status"])}</p>'
            + "<h2>What became of the children</h2>" + _table(["outcome", "children"], outcomes)
            + "<h2>By operation and round</h2>" + _table(["operation", "round", "children", "kept", "mean reward"], operations)
            + "<h2>LLM requests sent</h2>" + (_table(["role", "calls", "not ok", "prompt tokens", "completion tokens",
                                                      "USD", "mean latency ms"], calls) if calls else
                                              "<p>none: every answer came from the cache</p>")
            + "<h2>Diagnosis</h2>" + _table(["category", "graded", "failed", "fail rate", ""], diagnosis)
            + "<h2>Quality gates</h2>" + _table(["gate", "result", "expectations met"], gates)
            + '<p><a href="../">all synthesis runs</a></p>')
    return _page(f"synthesis {run_id}", body)


def _status(status: str) -> str:
    return f'<span class="{"ok" if status == "succeeded" else "bad" if status == "failed" else ""}">{escape(status)}</span>'


class InfinstructPlugin(AirflowPlugin):
    name = "infinstruct"
    fastapi_apps = [{"app": app, "url_prefix": "/infinstruct", "name": "infinstruct runs"}]
    external_views = [{"name": "infinstruct runs", "href": "infinstruct/", "destination": "nav",
                       "category": "browse", "url_route": "infinstruct_runs"},
                      {"name": "infinstruct synthesis", "href": "infinstruct/synthesis/", "destination": "nav",
                       "category": "browse", "url_route": "infinstruct_synthesis"}]
