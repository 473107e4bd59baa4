"""Airflow UI plugin: Browse -> "infinstruct runs" charts the funnel and drop reasons of a dataset's last runs and
lists the runs; a run's page shows its funnel as the run saw it (the counts stored when each stage finished,
`store/stage_counts.py`: a stage not finished is pending, never counted as kept), drops by stage and reason,
gates with their failing expectations, and its release with the card and the diff against the release before;
`explain` shows a record's lineage (by record id or file:line). "infinstruct synthesis" shows each Phase-2 run's
children by outcome and operation, its LLM calls and cost, and its diagnosis.

Served by the Airflow API server at /infinstruct/ (a FastAPI app) to logged-in users only; data comes from the
project's metadata store (`infinstruct.store.run_report`, `stage_counts`, `explain`); charts are inline SVG drawn
here (`infinstruct.charts`), no JavaScript.
"""

from __future__ import annotations

from html import escape

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

# plugin apps are not behind Airflow's auth by themselves: ask for the UI's login (cookie or bearer token)
app = FastAPI(title="infinstruct", dependencies=[Depends(get_user)])

STYLE = """<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}.pending{color:#6e7781;font-style:italic}code{font-size:.9em}
.charts svg{display:block;margin:.5rem 0 1rem}.card{max-width:60rem;border-left:3px solid #ddd;padding-left:1rem}
form.explain{margin:.5rem 0 1rem}</style>"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><title>{escape(title)}</title>{STYLE}</head><body><h1>{escape(title)}</h1>"
        f"{body}</body></html>",
        status_code=status_code,
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _engine():
    from infinstruct.store.db import get_engine

    return get_engine()


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _state(state: str) -> str:
    css = {"done": "ok", "partial": "bad", "not run": "bad"}.get(state, "pending")
    return f'<span class="{css}">{escape(state)}</span>'


def _explain_form(ref: str = "", action: str = "explain") -> str:
    return (
        f'<form action="{action}" method="get" class="explain"><label>Lineage of a record: '
        f'<input name="ref" size="48" value="{escape(ref)}" placeholder="record id, or file:line"></label>'
        ' <button type="submit">explain</button></form>'
    )


def _history_charts(history: list[dict]) -> str:
    """The funnel of each of the last runs (input lines: kept, dropped per stage, quarantined, still undecided)
    and their drop reasons (the most frequent nine, the rest as other)."""
    from infinstruct.charts import KEPT, OTHER, PENDING, colors, stacked_bars
    from infinstruct.stages import ledger_order

    funnel_bars, reason_totals, per_run = [], {}, []
    for run in history:
        stages = {s["stage"]: s for s in run["funnel"]["stages"]}
        ingest = stages.get("ingest", {})
        lines = ingest.get("standing_in") or 0
        dropped = [
            (s["stage"] if s["stage"] != "ingest" else "quarantined", sum(s["dropped"].values()))
            for s in run["funnel"]["stages"]
            if s["standing_in"] is not None
        ]
        rest = lines - sum(n for _, n in dropped)
        funnel_bars.append(
            (run["run_id"], [("kept" if run["funnel"]["kept"] is not None else "undecided", rest), *dropped[::-1]])
        )
        reasons = {}
        for s in run["funnel"]["stages"]:
            for reason, n in s["dropped"].items():
                reasons[reason] = reasons.get(reason, 0) + n
                reason_totals[reason] = reason_totals.get(reason, 0) + n
        per_run.append((run["run_id"], reasons))
    series = ["kept", "undecided", "quarantined", *[s for s in ledger_order() if s != "ingest"]]
    top = sorted(reason_totals, key=lambda r: (-reason_totals[r], r))[:9]
    reason_bars = [
        (
            run_id,
            [*((r, reasons.get(r, 0)) for r in top), ("other", sum(n for r, n in reasons.items() if r not in top))],
        )
        for run_id, reasons in per_run
    ]
    return stacked_bars(
        f"Funnel of the last {len(history)} runs (input lines)",
        funnel_bars,
        colors(series, {"kept": KEPT, "undecided": PENDING, "quarantined": "#57606a"}),
        note="each run as it saw it: counts stored when each stage finished; undecided: a running run's "
        "records no stage has decided yet",
    ) + stacked_bars(
        f"Drop reasons of the last {len(history)} runs (lines)", reason_bars, colors([*top, "other"], {"other": OTHER})
    )


@app.get("/", response_class=HTMLResponse)
def runs(dataset: str | None = None, n: int = Query(20, ge=1, le=200)) -> HTMLResponse:
    from infinstruct.store.run_report import datasets, funnel_history, recent_runs
    from infinstruct.store.stage_counts import run_funnels

    engine = _engine()
    recent = recent_runs(engine)
    funnels = run_funnels(engine, [r["run_id"] for r in recent])
    rows = [
        [
            f'<a href="run/{escape(r["run_id"])}">{escape(r["run_id"])}</a>',
            escape(r["dataset"]),
            f'<span class="{"ok" if r["status"] == "succeeded" else "bad" if r["status"] == "failed" else ""}"'
            f' title="{escape(r["end_reason"] or "")}">{escape(r["status"])}</span>',
            escape(str(r["started_at"])[:19]),
            str(r["partitions"]),
            _kept(funnels[r["run_id"]]),
            f'<span class="bad">{r["failed_gates"]}</span>' if r["failed_gates"] else "0",
            f"v{r['version']:04d}" if r["version"] else "",
        ]
        for r in recent
    ]
    names = datasets(engine)
    dataset = dataset if dataset in names else (names[0] if names else None)
    charts = ""
    if dataset is not None:
        others = " ".join(f'<a href="?dataset={escape(d)}&amp;n={n}">{escape(d)}</a>' for d in names if d != dataset)
        history = funnel_history(engine, dataset, n)
        charts = (
            f"<h2>Dataset {escape(dataset)}: the last {len(history)} runs</h2>"
            + (f"<p>other datasets: {others}</p>" if others else "")
            + f'<div class="charts">{_history_charts(history)}</div>'
        )
    return _page(
        "infinstruct runs",
        _explain_form()
        + charts
        + "<h2>Runs</h2>"
        + _table(["run", "dataset", "status", "started", "partitions", "kept", "failed gates", "release"], rows)
        + '<p><a href="synthesis/">synthesis runs (Phase 2)</a></p>',
    )


def _kept(funnel: dict) -> str:
    if funnel["kept"] is not None:
        return f"<b>{funnel['kept']:,}</b>"
    if not funnel["recorded"]:
        return '<span class="pending" title="no per-stage counts were stored for this run">not recorded</span>'
    return _state("pending" if funnel["status"] == "running" else "not run")


def _funnel_section(engine, run_id: str) -> str:
    from infinstruct.charts import funnel as funnel_chart
    from infinstruct.store.run_report import run_funnel
    from infinstruct.store.stage_counts import run_funnel_by_source, run_funnels

    funnel = run_funnels(engine, [run_id])[run_id]
    if not funnel["recorded"]:  # a run from before run_stage_counts: say plainly that this is today's recount
        rows = [
            [
                escape(f["source"]),
                str(f["lines"]),
                str(f["quarantined"]),
                str(f["dropped"]),
                f"{f['kept']}",
                "<br>".join(f"<code>{escape(reason)}</code> {n}" for reason, n in f["reasons"].items()),
            ]
            for f in run_funnel(engine, run_id)
        ]
        return (
            '<h2>Funnel</h2><p class="bad">No per-stage counts were stored for this run (it ran before they were,'
            " or no stage has finished). The ledger as it stands now, which later runs may have changed:</p>"
            + _table(["source", "lines", "quarantined", "dropped", "standing now", "reasons"], rows)
        )
    stages = funnel["stages"]
    chart_rows = [
        ("input lines", stages[0]["standing_in"], "")
        if stages[0]["state"] == "done"
        else ("input lines", None, "pending")
    ]
    chart_rows += [
        (s["stage"], s["standing_out"], "")
        if s["state"] == "done"
        else (
            s["stage"],
            None,
            f"{s['state']}: {s['partitions']} of {s['planned']} partitions counted" if s["partitions"] else s["state"],
        )
        for s in stages
    ]
    table = [
        [
            f"<code>{escape(s['stage'])}</code>",
            _state(s["state"]),
            f"{s['partitions']} of {s['planned']}",
            _n(s["standing_in"]),
            _n(sum(s["dropped"].values())) if s["standing_in"] is not None else "",
            f"<b>{_n(s['standing_out'])}</b>" if s["state"] == "done" else _n(s["standing_out"]),
            escape(str(s["taken_at"] or "")[:19]),
        ]
        for s in stages
    ]
    reasons = [
        [f"<code>{escape(s['stage'])}</code>", f"<code>{escape(reason)}</code>", f"{k:,}"]
        for s in stages
        for reason, k in s["dropped"].items()
    ]
    order = [s["stage"] for s in stages]
    by_source = [
        [
            escape(src["source"]),
            _n(src["stages"].get("ingest", {}).get("standing_in")),
            *(_n(sum(src["stages"][st]["dropped"].values())) if st in src["stages"] else "" for st in order),
            _n(src["stages"][order[-1]]["standing_out"]) if funnel["kept"] is not None else _state("pending"),
        ]
        for src in run_funnel_by_source(engine, run_id)
    ]
    kept = (
        f"<p>Kept: <b>{funnel['kept']:,}</b> records.</p>"
        if funnel["kept"] is not None
        else f"<p>Not every stage has finished ({escape(funnel['status'] or '')}): no kept count yet.</p>"
    )
    return (
        "<h2>Funnel as the run saw it</h2><p>Counts stored when each stage finished for this run; a stage"
        " not finished is shown pending, not as kept.</p>"
        + kept
        + funnel_chart("Records standing after each stage", chart_rows)
        + _table(["stage", "state", "partitions", "standing before", "dropped", "standing after", "counted at"], table)
        + "<h2>Drops by stage and reason</h2>"
        + (_table(["stage", "reason", "lines"], reasons) if reasons else "<p>none</p>")
        + "<h2>Per source</h2>"
        + _table(["source", "lines", *("quarantined" if st == "ingest" else st for st in order), "kept"], by_source)
    )


def _release_section(engine, run_id: str) -> str:
    from markdown_it import MarkdownIt

    from infinstruct.store.run_report import run_release

    release = run_release(engine, run_id)
    if release is None:
        return "<h2>Release</h2><p>This run produced no release.</p>"
    diff, totals = release["diff"], release["manifest"]["totals"]
    if release["previous_version"] is None:
        against = "<p>The first release of this dataset: nothing to compare with.</p>"
    else:
        changed = (
            " (the previous release's files are gone: record ids not compared)" if diff.get("removed") is None else ""
        )
        against = (
            f"<p>Against v{release['previous_version']:04d}: <b>+{_n(diff.get('added'))}</b> added,"
            f" <b>-{_n(diff.get('removed'))}</b> removed, {_n(diff.get('unchanged'))} unchanged{changed}.</p>"
            + _table(
                ["source", "lines before", "lines after", "kept before", "kept after"],
                [
                    [
                        escape(s["source"]),
                        _n(s["lines_before"]),
                        _n(s["lines_after"]),
                        _n(s["kept_before"]),
                        _n(s["kept_after"]),
                    ]
                    for s in release["sources"]
                ],
            )
            + _table(
                ["stage", "reason", "before", "after"],
                [
                    [
                        f"<code>{escape(r['stage'])}</code>",
                        f"<code>{escape(r['reason'])}</code>",
                        _n(r["before"]),
                        f"<b>{_n(r['after'])}</b>" if r["before"] != r["after"] else _n(r["after"]),
                    ]
                    for r in release["reasons"]
                ],
            )
        )
    card = MarkdownIt("commonmark", {"html": False}).enable("table").render(release["card"].split("\n---\n", 1)[-1])
    return (
        f"<h2>Release v{release['version']:04d}</h2><p><code>{escape(release['path'])}</code>: {totals['kept']:,} records"
        f" of {totals['lines']:,} lines ({totals['dropped']:,} dropped, {totals['quarantined']:,} quarantined)</p>"
        + "<h3>Diff against the previous release</h3>"
        + against
        + f'<details open><summary>Dataset card ({escape(release["card_from"])})</summary><div class="card">{card}</div></details>'
    )


@app.get("/run/{run_id:path}", response_class=HTMLResponse)
def run(run_id: str) -> HTMLResponse:
    from infinstruct.store.run_report import recent_runs, run_gates

    engine = _engine()
    found = [r for r in recent_runs(engine, limit=10_000) if r["run_id"] == run_id]
    if not found:
        raise HTTPException(status_code=404, detail=f"no run {run_id!r} in the infinstruct store")
    info = found[0]
    gates = [
        [
            escape(g["gate"]),
            escape(g["scope"]),
            '<span class="ok">passed</span>' if g["success"] else '<span class="bad">FAILED</span>',
            f"{g['statistics'].get('successful_expectations')}/{g['statistics'].get('evaluated_expectations')}",
            "<br>".join(
                f"<code>{escape(str(f['expectation']))}</code>({escape(str(f.get('column') or ''))}): "
                f"{escape(str(f['unexpected_count']))} e.g. {escape(str(f['sample']))}"
                for f in g["failures"]
            ),
        ]
        for g in run_gates(engine, run_id)
    ]
    body = (
        f"<p>dataset <b>{escape(info['dataset'])}</b>, {_status(info['status'])}"
        f"{' (' + escape(info['end_reason']) + ')' if info['end_reason'] else ''}, started {escape(str(info['started_at'])[:19])}"
        f"{', finished ' + escape(str(info['finished_at'])[:19]) if info['finished_at'] else ''}, recipe"
        f" <code>{escape(info['recipe_hash'])}</code></p>"
        + _funnel_section(engine, run_id)
        + "<h2>Quality gates</h2>"
        + (
            _table(["gate", "scope", "result", "expectations met", "failing expectations"], gates)
            if gates
            else "<p>no gate has run yet</p>"
        )
        + _release_section(engine, run_id)
        + _explain_form(action="../explain")
        + '<p><a href="../">all runs</a></p>'
    )
    return _page(f"run {run_id}", body)


@app.get("/explain", response_class=HTMLResponse)
def lineage(ref: str = Query("", max_length=4096)) -> HTMLResponse:
    from infinstruct.store.explain import ExplainError, explain

    ref = ref.strip()
    if not ref:
        return _page("record lineage", _explain_form() + '<p><a href="./">all runs</a></p>')
    try:
        lines = explain(_engine(), ref)
    except ExplainError as exc:
        return _page("record lineage", _explain_form(ref) + f'<p class="bad">{escape(str(exc))}</p>', 404)
    body = []
    for line in lines:
        head = (
            f"<h2>{escape(line['source'])} <code>{escape(line['path'])}:{line['line_no']}</code></h2>"
            f"<p>dataset {escape(line['dataset'])}, partition <code>{escape(line['partition_id'])}</code>, "
            + (
                f"record <code>{escape(line['record_id'])}</code>"
                if line["record_id"]
                else f'<span class="bad">quarantined at ingest</span>: <code>{escape(line["quarantine_reason"] or "")}</code>'
                f" {escape(line['quarantine_error'] or '')}"
            )
            + "</p>"
        )
        decisions = [
            [
                f"<code>{escape(d['stage'])}</code>",
                _status_verdict(d["verdict"]),
                f"<code>{escape(d['reason'] or '')}</code>",
                "" if d["score"] is None else f"{d['score']:.4g}",
                f"<code>{escape(d['duplicate_of'] or '')}</code>",
                f"<code>{escape(d['representative'] or '')}</code>",
                escape(d["detail"] or ""),
                f'<a href="run/{escape(d["run_id"])}">{escape(d["run_id"])}</a>',
            ]
            for d in line["decisions"]
        ]
        run_ = line["run"]
        gates = ", ".join(
            f"{escape(g['gate'])} {'passed' if g['success'] else '<b class=bad>FAILED</b>'}" for g in line["gates"]
        )
        releases = [
            [
                f"v{r['version']:04d}",
                _status_verdict(r["verdict"]),
                f"<code>{escape(r['reason'] or '')}</code>",
                f"<code>{escape(r['path'])}</code>",
            ]
            for r in line["releases"]
        ]
        body.append(
            head
            + (
                _table(
                    ["stage", "verdict", "reason", "score", "duplicate of", "representative", "detail", "run"],
                    decisions,
                )
                if decisions
                else "<p>no stage dropped it</p>"
            )
            + (
                f'<p>newest run that planned it: <a href="run/{escape(run_["run_id"])}">{escape(run_["run_id"])}</a>'
                f" ({escape(run_['status'])}); gates: {gates or 'none'}</p>"
                if run_
                else ""
            )
            + (_table(["release", "verdict", "reason", "folder"], releases) if releases else "<p>in no release</p>")
        )
    return _page(f"lineage of {ref}", _explain_form(ref) + "".join(body) + '<p><a href="./">all runs</a></p>')


def _status_verdict(verdict: str | None) -> str:
    return f'<span class="{"ok" if verdict == "kept" else "bad"}">{escape(verdict or "")}</span>'


@app.get("/synthesis/", response_class=HTMLResponse)
def synthesis_runs() -> HTMLResponse:
    from infinstruct.store.db import get_engine
    from infinstruct.synth.report import recent_synthesis_runs

    rows = [
        [
            f'<a href="run/{escape(r["run_id"])}">{escape(r["run_id"])}</a>',
            escape(r["dataset"]),
            f"v{r['release_version']:04d}",
            _status(r["status"]),
            escape(str(r["started_at"])[:19]),
            str(r["seeds"]),
            str(r["children"]),
            f"<b>{r['kept']}</b>",
            f"v{r['version']:04d}" if r["version"] else "",
        ]
        for r in recent_synthesis_runs(get_engine())
    ]
    return _page(
        "infinstruct synthesis runs",
        _table(
            ["run", "dataset", "from release", "status", "started", "seeds", "children", "kept", "synthetic release"],
            rows,
        )
        + '<p><a href="../">curation runs</a></p>',
    )


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
    operations = [
        [
            escape(o["operation"]),
            str(o["round"]),
            str(o["children"]),
            f"<b>{o['kept']}</b>",
            f"{o['mean_reward']:.1f}" if o["mean_reward"] is not None else "",
        ]
        for o in summary["operations"]
    ]
    calls = [
        [
            escape(c["role"]),
            str(c["calls"]),
            str(c["not_ok"]),
            f"{c['prompt_tokens']:,}",
            f"{c['completion_tokens']:,}",
            f"{c['cost_usd']:.4f}" if c["cost_usd"] is not None else "",
            str(c["mean_latency_ms"]),
        ]
        for c in summary["calls"]
    ]
    diagnosis = [
        [
            escape(d["category"]),
            str(d["graded"]),
            str(d["failed"]),
            f"{d['fail_rate']:.2f}",
            '<span class="bad">weak</span>' if d["weak"] else "",
        ]
        for d in summary["diagnosis"]
    ]
    gates = [
        [
            escape(g["gate"]),
            '<span class="ok">passed</span>' if g["success"] else '<span class="bad">FAILED</span>',
            f"{g['statistics'].get('successful_expectations')}/{g['statistics'].get('evaluated_expectations')}",
        ]
        for g in run_gates(engine, run_id)
    ]
    body = (
        f"<p>{escape(summary['dataset'])} v{summary['release_version']:04d} ({escape(summary['release_path'])}): "
        f"{_status(summary['status'])}</p>"
        + "<h2>What became of the children</h2>"
        + _table(["outcome", "children"], outcomes)
        + "<h2>By operation and round</h2>"
        + _table(["operation", "round", "children", "kept", "mean reward"], operations)
        + "<h2>LLM requests sent</h2>"
        + (
            _table(["role", "calls", "not ok", "prompt tokens", "completion tokens", "USD", "mean latency ms"], calls)
            if calls
            else "<p>none: every answer came from the cache</p>"
        )
        + "<h2>Diagnosis</h2>"
        + _table(["category", "graded", "failed", "fail rate", ""], diagnosis)
        + "<h2>Quality gates</h2>"
        + _table(["gate", "result", "expectations met"], gates)
        + '<p><a href="../">all synthesis runs</a></p>'
    )
    return _page(f"synthesis {run_id}", body)


def _status(status: str) -> str:
    return f'<span class="{"ok" if status == "succeeded" else "bad" if status == "failed" else ""}">{escape(status)}</span>'


class InfinstructPlugin(AirflowPlugin):
    name = "infinstruct"
    fastapi_apps = [{"app": app, "url_prefix": "/infinstruct", "name": "infinstruct runs"}]
    external_views = [
        {
            "name": "infinstruct runs",
            "href": "infinstruct/",
            "destination": "nav",
            "category": "browse",
            "url_route": "infinstruct_runs",
        },
        {
            "name": "infinstruct synthesis",
            "href": "infinstruct/synthesis/",
            "destination": "nav",
            "category": "browse",
            "url_route": "infinstruct_synthesis",
        },
    ]
