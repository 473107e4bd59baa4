"""The Airflow UI plugin renders a run's funnel and gates from the store."""
from __future__ import annotations

import importlib.util
import uuid

from fastapi.testclient import TestClient

from conftest import ROOT, write_jsonl, write_recipe
from infinstruct import pipeline


def load_plugin():
    spec = importlib.util.spec_from_file_location("infinstruct_views", ROOT / "plugins" / "infinstruct_views.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logged_in_client(plugin) -> TestClient:
    """A client past Airflow's login (what the API server checks is Airflow's business, not ours)."""
    plugin.app.dependency_overrides[plugin.get_user] = lambda: None
    return TestClient(plugin.app)


def test_pages_need_an_airflow_login():
    response = TestClient(load_plugin().app).get("/")
    assert response.status_code == 401


def test_run_page_shows_funnel_and_gates(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi?", "input": "", "output": "Hello."}, "{oops",
                                       {"instruction": "Hi?", "input": "", "output": "Hello."}])
    recipe = write_recipe(tmp_path, f"plugin-{uuid.uuid4().hex[:6]}", [{"name": "greetings", "path": "a.jsonl", "format": "alpaca"}],
                          ingest={"max_quarantine_ratio": 1.0})
    run_id = f"plugin-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    for part in pipeline.plan(run_id):
        pipeline.ingest_partition(run_id, part)
    pipeline.check_ingested(run_id)
    pipeline.deduplicate(run_id)

    plugin = load_plugin()
    assert plugin.InfinstructPlugin.fastapi_apps[0]["url_prefix"] == "/infinstruct"
    client = logged_in_client(plugin)
    assert run_id in client.get("/").text
    page = client.get(f"/run/{run_id}").text
    assert "greetings" in page and "quarantine:invalid_json</code> 1" in page and "exact_duplicate</code> 1" in page
    assert "<b>1</b>" in page  # one kept record
    assert "passed" in page


def test_unknown_run_is_404(engine):
    client = logged_in_client(load_plugin())
    assert client.get("/run/no-such-run").status_code == 404
