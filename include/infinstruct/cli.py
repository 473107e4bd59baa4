"""`infinstruct` command line.

    infinstruct run [--recipe PATH] [--out DIR]   run the curation DAG once, in this process (dag.test)
    infinstruct synthesize [--recipe PATH] [--release DIR] [--out DIR]
                                                  run the synthesis DAG (Phase 2) once on a release
    infinstruct setup-airflow                     migrate Airflow's database and create the pools the DAGs use
    infinstruct prompts [NAME]                    Phase 2's prompt templates (the recipe's own replace them)
    infinstruct migrate                           create / upgrade the metadata store schema
    infinstruct database-url                      print the metadata store URL (starts the embedded server)
    infinstruct vector-support                    whether pgvector works on that server (the probe's answer)
    infinstruct stages [--json] [--synthesis]     the stages a DAG is built from, in order
    infinstruct leases [--release DATASET]        which run holds each dataset (runs of one dataset never overlap)
    infinstruct status [--dataset D] [--runs N]   the last runs: their funnels (lines, kept, dropped by stage,
                                                  quarantined) and releases
    infinstruct explain <record-id | file:line>   every decision on the line(s), the gates of its run, the releases
                                                  that hold it
    infinstruct diff <release-a> <release-b>      records added / removed / unchanged, per source and reason
                                                  (a release folder, or dataset@version)

`run` and `synthesize` need no Airflow services: they use $AIRFLOW_HOME if set, else
<INFINSTRUCT_HOME>/airflow with a SQLite metadata database, migrated (and given its pools) on first use.
They print a line per stage as it finishes and a summary; Airflow's and the tasks' logs go to
<INFINSTRUCT_HOME>/logs/<command>-<time>.log (the path is printed; --verbose: to the terminal too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from infinstruct.config import DEFAULT_RECIPE, PROJECT_ROOT, infinstruct_home, load_recipe

DAG_ID = "infinstruct_curation"
SYNTHESIS_DAG_ID = "infinstruct_synthesis"


def _airflow_env() -> dict[str, str]:
    """Point Airflow at the project's dags and a local home, unless the user already did."""
    home = os.environ.get("AIRFLOW_HOME") or str(infinstruct_home() / "airflow")
    defaults = {
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    # as Airflow's DAG bundle does for its processes: the DAG files import their shared module (infinstruct_tasks)
    if os.environ["AIRFLOW__CORE__DAGS_FOLDER"] not in sys.path:
        sys.path.append(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    return defaults


def ensure_airflow_db() -> None:
    """Migrate Airflow's own metadata database and create the DAGs' pools, once per Airflow version and pools."""
    from importlib.metadata import version

    from infinstruct.stages import AIRFLOW_POOLS

    home = Path(os.environ["AIRFLOW_HOME"])
    key = hashlib.sha256(json.dumps(AIRFLOW_POOLS, sort_keys=True).encode()).hexdigest()[:8]
    marker = home / f".infinstruct-migrated-{version('apache-airflow-core')}-{key}"
    default_sqlite = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ

    def needed() -> bool:
        return not marker.exists() or (default_sqlite and not (home / "airflow.db").exists())

    if needed():
        # two first runs on a fresh home would both migrate ("table connection already exists"): one waits
        with airflow_setup_lock(home):
            if needed():
                subprocess.run(
                    [sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL
                )
                create_pools()
                marker.touch()


def airflow_setup_lock(home: Path):
    """The lock serialising the setup of Airflow's metadata database for the Airflow home `home`."""
    from infinstruct.setup_lock import setup_lock

    return setup_lock(home / ".infinstruct-setup.lock", f"Airflow's metadata database of {home}")


def create_pools() -> None:
    """Every pool a stage names (a task whose pool is missing would wait forever); existing ones keep their slots."""
    from infinstruct.stages import AIRFLOW_POOLS

    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "pools", "list", "-o", "json"], check=True, capture_output=True, text=True
    ).stdout
    existing = {p["pool"] for p in json.loads(listed or "[]")}
    for name, (slots, description) in AIRFLOW_POOLS.items():
        if name not in existing:
            subprocess.run(
                [sys.executable, "-m", "airflow", "pools", "set", name, str(slots), description],
                check=True,
                stdout=subprocess.DEVNULL,
            )


def _test_run(dag_id: str, conf: dict, verbose: bool = False):
    """One run of a DAG in this process (dag.test): a line per stage as it finishes, Airflow's and the tasks'
    logs to a log file (and the terminal too when `verbose`); returns the DagRun, the log file and the seconds."""
    from infinstruct import progress
    from infinstruct.stages import SYNTHESIS_STAGES, all_stages

    log = progress.log_path("synthesize" if dag_id == SYNTHESIS_DAG_ID else "run")
    print(f"{dag_id}: Airflow and task logs go to {log}{' (and here)' if verbose else ''}", flush=True)
    started = time.monotonic()
    with progress.logs_to(log, verbose) as out:
        _airflow_env()
        ensure_airflow_db()
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        if bag.import_errors:
            raise SystemExit(f"DAG import errors: {bag.import_errors}")
        tasks = [s.task for s in (SYNTHESIS_STAGES if dag_id == SYNTHESIS_DAG_ID else all_stages())]
        with progress.DagRunProgress(dag_id, tasks, out):
            dag_run = bag.dags[dag_id].test(run_conf=conf)
    return dag_run, log, time.monotonic() - started


def run(recipe_path: str, out_dir: str, partition: str | None = None, verbose: bool = False) -> int:
    recipe, path = load_recipe(recipe_path)  # fail fast, with a clear message, before Airflow starts
    conf = {"recipe": str(path), "out_dir": str(Path(out_dir).resolve())}
    dag_run, log, elapsed = _test_run(DAG_ID, conf | ({"partition": partition} if partition else {}), verbose)
    if str(dag_run.state) != "success":
        from infinstruct.pipeline import mark_failed

        mark_failed(dag_run.run_id)
    return _summary(dag_run, log, elapsed)


def _summary(dag_run, log: Path, elapsed: float) -> int:
    """Print what the run made (release, totals, drops by stage, gates) or what failed; the exit code."""
    from infinstruct.progress import run_summary
    from infinstruct.store.db import get_engine

    ok = str(dag_run.state) == "success"
    print(run_summary(get_engine(), dag_run, _release_of(dag_run.run_id) if ok else None, log, elapsed))
    return 0 if ok else 1


def synthesize(recipe_path: str, release: str, out_dir: str, verbose: bool = False) -> int:
    recipe, path = load_recipe(recipe_path)
    if recipe.synthesis is None:
        raise SystemExit(f"recipe {path} has no `synthesis` section: add one (`synthesis: {{}}` takes the defaults)")
    from infinstruct.ml.llm_server import stop_local_llm

    try:
        dag_run, log, elapsed = _test_run(
            SYNTHESIS_DAG_ID,
            {"recipe": str(path), "release": str(Path(release).resolve()), "out_dir": str(Path(out_dir).resolve())},
            verbose,
        )
    finally:  # the embedded LLM server, if the run started one: its work is done (the cache keeps the answers)
        if stop_local_llm():
            print("stopped the embedded LLM server")
    if str(dag_run.state) != "success":
        from infinstruct.synth.pipeline import mark_failed

        mark_failed(dag_run.run_id)
    return _summary(dag_run, log, elapsed)


def _release_of(run_id: str) -> dict | None:
    import sqlalchemy as sa

    from infinstruct.store.db import get_engine

    with get_engine().connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "select version, path, manifest from run_releases where run_id = :r order by version desc limit 1"
                ),
                {"r": run_id},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def _report(args, engine) -> int:
    """`status`, `explain` and `diff`: read-only views of the store and the releases."""
    if args.command == "status":
        from infinstruct.store import run_status

        print(run_status.render(run_status.last_runs(engine, args.dataset, args.runs)))
    elif args.command == "explain":
        from infinstruct.store import explain

        try:
            print(explain.render(explain.explain(engine, args.ref)))
        except explain.ExplainError as exc:
            print(exc, file=sys.stderr)
            return 1
    else:
        from infinstruct.release import diff

        try:
            a, b = diff.resolve(args.a, engine), diff.resolve(args.b, engine)
        except diff.ReleaseNotFound as exc:
            print(exc, file=sys.stderr)
            return 1
        print(diff.render(diff.diff_releases(a, b)))
    return 0


def print_stages(as_json: bool, synthesis: bool = False) -> int:
    from infinstruct.stages import SYNTHESIS_STAGES, all_stages, task_table

    stages = SYNTHESIS_STAGES if synthesis else all_stages()
    if as_json:
        for spec in stages:
            print(
                json.dumps(
                    {
                        "task": spec.task,
                        "kind": spec.kind.value,
                        "step": spec.step,
                        "after": list(spec.after),
                        "ledger_stage": str(spec.decides) if spec.decides else None,
                        "reasons": list(spec.reasons),
                        "section": spec.section,
                    }
                )
            )
    else:
        print(task_table(stages))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infinstruct", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run the curation DAG once on a recipe (no Airflow services needed)")
    run_cmd.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe YAML (default: the bundled sample)")
    run_cmd.add_argument("--out", default="releases", help="release folder (default: ./releases)")
    run_cmd.add_argument(
        "--verbose", action="store_true", help="Airflow's and the tasks' log lines on the terminal too"
    )
    run_cmd.add_argument(
        "--partition",
        help="partition key (e.g. 2026-12-01): sources naming {partition} are read up "
        "to it, as the nightly run or a backfill of that night reads them",
    )
    commands.add_parser("migrate", help="create or upgrade the metadata store schema")
    commands.add_parser("database-url", help="print the metadata store URL")
    commands.add_parser("vector-support", help="probe (once per server start) whether pgvector works on the server")
    stages_cmd = commands.add_parser("stages", help="print the stages the DAG is built from (Markdown, or --json)")
    stages_cmd.add_argument("--json", action="store_true", help="one JSON object per stage")
    stages_cmd.add_argument("--synthesis", action="store_true", help="the synthesis DAG's stages (Phase 2)")
    synth_cmd = commands.add_parser("synthesize", help="run the synthesis DAG (Phase 2) once on a release")
    synth_cmd.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe YAML with a `synthesis` section")
    synth_cmd.add_argument(
        "--release",
        default="releases",
        help="a release folder, or the folder holding <dataset>/LATEST (default: ./releases)",
    )
    synth_cmd.add_argument("--out", default="releases", help="folder that receives <dataset>/synthetic/vNNNN")
    synth_cmd.add_argument(
        "--verbose", action="store_true", help="Airflow's and the tasks' log lines on the terminal too"
    )
    status_cmd = commands.add_parser("status", help="the last runs and their funnels")
    status_cmd.add_argument("--dataset", help="only this dataset's runs")
    status_cmd.add_argument("--runs", type=int, default=5, help="how many runs, newest first (default 5)")
    explain_cmd = commands.add_parser("explain", help="a record's lineage: every decision, gate and release")
    explain_cmd.add_argument(
        "ref", metavar="record-id | file:line", help="a record id, or a source file's path (or its end) and line number"
    )
    diff_cmd = commands.add_parser("diff", help="what changed between two releases")
    diff_cmd.add_argument("a", metavar="release-a", help="a release folder, or dataset@version (sample@1)")
    diff_cmd.add_argument("b", metavar="release-b", help="a release folder, or dataset@version")
    commands.add_parser("setup-airflow", help="migrate Airflow's database and create the pools the DAGs use")
    leases_cmd = commands.add_parser(
        "leases", help="which run holds each dataset's lease (one run at a time per dataset)"
    )
    leases_cmd.add_argument(
        "--release",
        metavar="DATASET",
        help="free the dataset's lease by hand (only when its holder is known dead: a dead holder "
        "is taken over by itself after INFINSTRUCT_RUN_LOCK_STALE seconds)",
    )
    prompts_cmd = commands.add_parser("prompts", help="print Phase 2's prompt templates")
    prompts_cmd.add_argument("name", nargs="?", help="one template")
    args = parser.parse_args(argv)

    if args.command == "run":
        return run(args.recipe, args.out, args.partition, args.verbose)
    if args.command == "synthesize":
        return synthesize(args.recipe, args.release, args.out, args.verbose)
    if args.command == "stages":
        return print_stages(args.json, args.synthesis)
    if args.command == "setup-airflow":
        _airflow_env()
        with airflow_setup_lock(Path(os.environ["AIRFLOW_HOME"])):
            subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
            create_pools()
        print(
            subprocess.run(
                [sys.executable, "-m", "airflow", "pools", "list"], check=True, capture_output=True, text=True
            ).stdout
        )
        return 0
    if args.command == "prompts":
        from infinstruct.synth.prompts import TEMPLATES, version

        for name in [args.name] if args.name else TEMPLATES:
            print(f"## {version(name)}\n{TEMPLATES[name]}\n")
        return 0
    from infinstruct.store.db import get_engine, schema_version

    engine = get_engine()
    if args.command == "migrate":
        print(f"schema version {schema_version(engine)}")
    elif args.command == "leases":
        from infinstruct.store import run_lease

        if args.release:
            holder = run_lease.force_release(engine, args.release)
            print(f"released {args.release} (held by run {holder})" if holder else f"no lease on {args.release}")
            return 0
        for lease in run_lease.leases(engine):
            print(json.dumps(lease, default=str))
        return 0
    elif args.command in ("status", "explain", "diff"):
        return _report(args, engine)
    elif args.command == "vector-support":
        from infinstruct.store.vector_probe import cpu_description, vector_support

        support = vector_support(engine)
        print(
            json.dumps(
                {
                    "works": support.ok,
                    "detail": support.detail,
                    "cpu": cpu_description(),
                    "server_started_at": support.server_started_at.isoformat(),
                    "index_auto": "pgvector" if support.ok else "exact",
                },
                indent=2,
            )
        )
        return 0 if support.ok else 1
    else:
        print(engine.url.render_as_string(hide_password=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
