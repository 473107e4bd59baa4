"""The per-stage line `infinstruct run` prints: what a stage's instances returned, said in a few words."""

from __future__ import annotations

from infinstruct.progress import describe


def test_mapped_counts_are_added_up_and_drops_carry_their_reasons():
    results = [
        {
            "partition_id": "a",
            "decided": 4,
            "dropped": 1,
            "by_reason": {"rule:refusal": 1},
            "rule:refusal": 1,
            "skipped": False,
        },
        {
            "partition_id": "b",
            "decided": 6,
            "dropped": 2,
            "by_reason": {"rule:refusal": 1, "rule:too_short": 1},
            "skipped": True,
        },
    ]
    assert (
        describe("apply_rules", results) == "decided 10, dropped 3 (rule:refusal 2, rule:too_short 1), skipped 1 of 2"
    )


def test_gates_plans_releases_and_switched_off_stages_say_what_they_are():
    assert (
        describe(
            "check_release",
            [
                {
                    "gate": "release",
                    "success": True,
                    "statistics": {"successful_expectations": 17, "evaluated_expectations": 17},
                }
            ],
        )
        == "gate release: passed (17/17 expectations)"
    )
    assert (
        describe("check_release", [{"gate": "release", "success": False, "statistics": {}}]) == "gate release: FAILED"
    )
    assert describe("plan_partitions", [[{"partition_id": "a", "label": "chat/1 of 2"}, "b"]]) == "2 partition(s)"
    assert (
        describe("export_release", [{"path": "/r/sample/v0003", "version": 3, "totals": {}}])
        == "v0003 at /r/sample/v0003"
    )
    assert describe("select_records", [{"disabled": True}]) == "off (its recipe section is absent)"
    assert (
        describe(
            "deduplicate",
            [
                {
                    "decided": 5,
                    "dropped": 0,
                    "by_reason": {},
                    "skipped": False,
                    "full_pass": False,
                    "why": "2 partition(s) added",
                }
            ],
        )
        == "decided 5, dropped 0, incremental pass (2 partition(s) added)"
    )
    assert (
        describe(
            "deduplicate",
            [
                {
                    "decided": 9,
                    "dropped": 1,
                    "by_reason": {"exact_duplicate": 1},
                    "skipped": False,
                    "full_pass": True,
                    "why": "first pass",
                }
            ],
        )
        == "decided 9, dropped 1 (exact_duplicate 1), full pass (first pass)"
    )  # a flag not set is not shown


def test_a_batch_index_is_not_a_count():
    assert (
        describe("judge", [{"batch": 0, "kept": 1, "judged": 2}, {"batch": 1, "kept": 0, "judged": 1}])
        == "kept 1, judged 3"
    )


def test_a_long_stage_says_it_is_running_at_30_seconds_then_every_minute():
    import io
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from infinstruct.progress import DagRunProgress, running_line, running_seconds

    now = datetime.now(timezone.utc)
    rows = [  # a mapped stage: one instance done, one running for 95 s, one queued
        SimpleNamespace(map_index=0, state="success", start_date=now - timedelta(seconds=95)),
        SimpleNamespace(map_index=1, state="running", start_date=now - timedelta(seconds=40)),
        SimpleNamespace(map_index=2, state="queued", start_date=None),
    ]
    assert round(running_seconds(rows, now)) == 95
    assert running_seconds(rows[2:], now) is None  # nothing started yet: no line
    assert running_line("minhash", rows, 95.2) == "  minhash                running        95s  1/3 done"
    assert running_line("minhash", rows[:1], 95.2).endswith("95s  1/1 done")

    progress = DagRunProgress.__new__(DagRunProgress)  # its watcher, without a DAG run to watch
    progress.out, progress.still_due = io.StringIO(), {}
    for seconds in (10, 29, 31, 45, 89, 91, 95, 200):  # polls of one stage that started `seconds` ago
        progress._still_running(
            "minhash", [SimpleNamespace(map_index=-1, state="running", start_date=now - timedelta(seconds=seconds))]
        )
    lines = progress.out.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["31s", "91s", "200s"]  # due at 30, 90, then 150 s (seen at 200)


def test_the_summary_names_the_files_the_run_left_out(engine):
    from types import SimpleNamespace

    from infinstruct.progress import run_summary

    manifest = {
        "dataset": "nightly",
        "totals": {"lines": 3, "kept": 3, "dropped": 0, "quarantined": 0},
        "stages": {},
        "skipped_files": [
            {"source": "chat", "path": "/data/in/b.jsonl", "reason": "empty_file", "detail": "0 bytes"},
            {"source": "chat", "path": "/data/in/c.jsonl", "reason": "broken_symlink", "detail": "to nowhere"},
        ],
        "diff": {},
    }
    release = {"manifest": manifest, "version": 1, "path": "/out/nightly/v0001"}
    dag_run = SimpleNamespace(run_id="no-such-run", state="success")
    lines = run_summary(engine, dag_run, release, None, 12.0).splitlines()
    assert "  2 file(s) left out, not read: b.jsonl (empty_file), c.jsonl (broken_symlink)" in lines
