"""The Airflow UI plugin (issue 13 point 4): each run's funnel as it saw it, drops by stage and reason, gates with
their failing expectations, the release with its card and diff, charts of the last runs, a record's lineage; and
nothing for a request without Airflow's login."""

from __future__ import annotations

import importlib.util
import uuid

import pytest
from fastapi.testclient import TestClient

from conftest import ROOT, publish, run_dedup_steps, run_partition_steps, run_record_id, write_jsonl, write_recipe
from infinstruct import pipeline

GOOD = [
    {"instruction": f"Name {n} primary colours.", "input": "", "output": "Red, yellow and blue."} for n in range(2, 8)
]
REFUSAL = {"instruction": "Tell me a joke about cats.", "input": "", "output": "I'm sorry, but I can't help with that."}


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


@pytest.fixture(scope="module")
def released(engine, tmp_path_factory):
    """Two runs of one dataset, each through every step and exported (the second after its file grew), and a third
    still running (ingest and rules done): their run ids, and the folder of the source file."""
    folder = tmp_path_factory.mktemp("plugin")
    write_jsonl(folder / "a.jsonl", [GOOD[0], "{oops", GOOD[0], REFUSAL, GOOD[1]])
    recipe = write_recipe(
        folder,
        f"plugin-{uuid.uuid4().hex[:6]}",
        [{"name": "greetings", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"max_quarantine_ratio": 1.0},
    )
    runs = []
    for lines in (
        [GOOD[0], "{oops", GOOD[0], REFUSAL, GOOD[1]],
        [GOOD[0], "{oops", GOOD[0], REFUSAL, GOOD[1], GOOD[2], GOOD[3]],
    ):
        write_jsonl(folder / "a.jsonl", lines)
        run_id = run_dedup_steps(recipe)
        pipeline.check_ingested(run_id)
        pipeline.select(run_id)
        publish(run_id, folder / "out")
        runs.append(run_id)
    running = run_partition_steps(recipe)  # not deduplicated yet: still running
    return {"first": runs[0], "second": runs[1], "running": running, "folder": folder}


def test_anonymous_requests_get_401_and_no_data(released):
    client = TestClient(load_plugin().app)
    for path in ("/", f"/run/{released['second']}", f"/explain?ref={released['folder'] / 'a.jsonl'}:2", "/synthesis/"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert (
            released["second"] not in response.text
            and "greetings" not in response.text
            and "<table" not in response.text
        )


def test_run_page_shows_the_funnel_as_the_run_saw_it(released):
    client = logged_in_client(load_plugin())
    page = client.get(f"/run/{released['first']}").text
    # the first run read 5 lines; the second, 7: the first's page still says 5 lines and 2 kept
    assert "Funnel as the run saw it" in page and "Kept: <b>2</b> records." in page
    assert (
        '<td><code>ingest</code></td><td><span class="ok">done</span></td><td>1 of 1</td><td>5</td><td>1</td><td><b>4</b></td>'
        in page
    )
    assert "<td><code>rules</code></td><td><code>rule:refusal</code></td><td>1</td>" in page
    assert "<td><code>dedup</code></td><td><code>exact_duplicate</code></td><td>1</td>" in page
    assert "<svg" in page and "Records standing after each stage" in page
    assert "<td>ingested</td>" in page and "<td>release</td>" in page and "FAILED" not in page
    assert "Release v0001" in page and "The first release of this dataset" in page
    second = client.get(f"/run/{released['second']}").text
    assert "Kept: <b>4</b> records." in second and "Release v0002" in second
    assert "Against v0001: <b>+2</b> added, <b>-0</b> removed, 2 unchanged" in second
    assert "<td>greetings</td><td>5</td><td>7</td><td>2</td><td>4</td>" in second
    assert "<h2>Sources</h2>" in second  # the card, rendered from Markdown (its YAML header left out)
    assert "configs:" not in second


def test_a_running_run_shows_pending_stages_not_kept(released):
    page = logged_in_client(load_plugin()).get(f"/run/{released['running']}").text
    assert "no kept count yet" in page and "Kept:" not in page
    assert '<td><code>dedup</code></td><td><span class="pending">pending</span></td><td>0 of 1</td>' in page
    assert "This run produced no release." in page


def test_index_charts_the_last_runs(released):
    page = logged_in_client(load_plugin()).get("/?n=10").text
    assert all(released[k] in page for k in ("first", "second", "running"))
    assert "Funnel of the last 3 runs" in page and "Drop reasons of the last 3 runs" in page
    assert f"{released['first']}: kept 2</title>" in page and f"{released['running']}: undecided" in page
    assert "rule:refusal 1</title>" in page and "<b>4</b>" in page


def test_lineage_by_record_id_and_by_file_line(released, engine):
    client = logged_in_client(load_plugin())
    kept = run_record_id(engine, released["second"], "a.jsonl", 1)
    page = client.get("/explain", params={"ref": kept}).text
    assert "lineage of" in page and "a.jsonl:1" in page and "v0002" in page and "kept" in page
    page = client.get("/explain", params={"ref": "a.jsonl:4"}).text
    assert "rule:refusal" in page
    page = client.get("/explain", params={"ref": "a.jsonl:2"}).text
    assert "quarantined at ingest" in page
    assert client.get("/explain", params={"ref": "no-such-record"}).status_code == 404


def test_a_failing_gate_shows_its_expectations(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [GOOD[0], {"instruction": "Hi?", "input": "", "output": "Hello."}])
    recipe = write_recipe(
        tmp_path,
        f"plugin-{uuid.uuid4().hex[:6]}",
        [{"name": "long", "path": "a.jsonl", "format": "alpaca"}],
        gates={"max_record_chars": 30},
    )
    run_id = f"plugin-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    for part in pipeline.plan(run_id):
        pipeline.ingest_partition(run_id, part)
    with pytest.raises(Exception, match="FAILED"):
        pipeline.check_ingested(run_id)
    page = logged_in_client(load_plugin()).get(f"/run/{run_id}").text
    assert "FAILED" in page and "expect_column_values_to_be_between</code>(total_chars): 1" in page


def test_unknown_run_is_404(engine):
    client = logged_in_client(load_plugin())
    assert client.get("/run/no-such-run").status_code == 404
