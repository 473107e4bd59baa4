"""The seed step: the released, tagged records most worth evolving, in batches for the LLM tasks.

Candidates are the release's records with this run's tagger labels. Hardness: IFD from the student role's
prompt log-probs (`ml.logprobs`) for the best `ifd_candidates` by the other signals, when its endpoint returns
them; else (or with `hardness: proxy`) Phase 1's difficulty formula over the record (`curate.scoring.signals`:
instruction length, constraints, parts, reasoning, technical terms, answer length), a documented stand-in.
Weak categories come from the dataset's last diagnosis on an earlier release (`synth_diagnosis`): the loop
of Phase 2, closed release by release.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.curate.scoring.signals import difficulty_score, measure_signals
from infinstruct.ml.roles import Role
from infinstruct.synth.run import SynthesisRun, released_records
from infinstruct.synth.seeds.select import Candidate, label_counts, rank_seeds
from infinstruct.synth.tagging.stage import tagger_of

log = logging.getLogger(__name__)


def weak_categories(engine: Engine, run: SynthesisRun) -> frozenset[str]:
    """The weak categories of the dataset's last diagnosis on an earlier release. Not of this release's: a run
    on the same release again is a re-run, with the same seeds (and every answer from the cache)."""
    with engine.connect() as conn:
        last = conn.execute(
            sa.text(
                "select s.run_id from synth_runs s where s.dataset = :d and s.release_version < :v"
                " and s.status = 'succeeded' and exists (select 1 from synth_diagnosis g where g.run_id = s.run_id)"
                " order by s.release_version desc, s.finished_at desc limit 1"
            ),
            {"d": run.dataset, "v": run.release_version},
        ).scalar()
        if last is None:
            return frozenset()
        return frozenset(
            conn.execute(
                sa.text("select category from synth_diagnosis where run_id = :r and weak"), {"r": last}
            ).scalars()
        )


def _ifd(engine: Engine, run: SynthesisRun, pairs: list[tuple[str, str]]) -> list[float | None] | None:
    """IFD per (instruction, response), or None when the student's endpoint gives no prompt log-probs."""
    from infinstruct.ml import logprobs
    from infinstruct.ml.roles import resolve

    settings = resolve(run.recipe.llm.role(Role.STUDENT))
    if not logprobs.supports_prompt_logprobs(settings, engine, run_id=run.run_id):
        return None
    scores = logprobs.ifd_scores(settings, engine, pairs, run_id=run.run_id)
    return [s.ratio if s is not None else None for s in scores]


def _candidates(engine: Engine, run: SynthesisRun, tagger: str) -> list[Candidate]:
    """Every tagged record of the release, with its proxy hardness, streamed (the texts are not kept: a release
    may hold millions; `_texts` reads back those of the few that need them)."""
    settings = run.settings.seeds
    with engine.connect() as conn:
        tags = {
            row.record_id: row
            for row in conn.execute(
                sa.text(
                    "select t.record_id, t.abilities, t.categories from record_tags t join synth_release_records r"
                    " on r.record_id = t.record_id and r.run_id = :run where t.tagger = :t"
                ),
                {"t": tagger, "run": run.run_id},
            )
        }
    candidates = []
    for record in released_records(run.release_path):
        row = tags.get(record["id"])
        if row is None:
            continue
        proxy = difficulty_score(measure_signals(tuple(record["turns"]))) if settings.hardness != "off" else None
        candidates.append(
            Candidate(
                record["id"],
                "",
                tuple(row.abilities),
                tuple(row.categories),
                proxy,
                "proxy" if proxy is not None else None,
            )
        )
    return candidates


def _texts(run: SynthesisRun, ids: set[str]) -> dict[str, tuple[str, str]]:
    """(instruction, first answer) of the records `ids`, streamed from the release."""
    return {r["id"]: (r["instruction"], r["response"]) for r in released_records(run.release_path) if r["id"] in ids}


def select_seeds(engine: Engine, run: SynthesisRun) -> list[int]:
    """Pick and store the run's seeds (replacing any of a previous try); returns the batch numbers."""
    settings = run.settings.seeds
    tagger = tagger_of(run.recipe)
    candidates = _candidates(engine, run, tagger)
    weak = weak_categories(engine, run)
    counts = label_counts(candidates)
    hardness_kind = "proxy"
    if settings.hardness == "ifd":
        shortlist = rank_seeds(
            [replace(c, hardness=None, hardness_kind=None) for c in candidates], counts, settings, weak
        )[: settings.ifd_candidates]
        texts = _texts(run, {s.candidate.record_id for s in shortlist})
        ifd = _ifd(engine, run, [texts[s.candidate.record_id] for s in shortlist])
        if ifd is not None:
            hardness_kind = "ifd"
            by_id = {s.candidate.record_id: value for s, value in zip(shortlist, ifd)}
            candidates = [
                replace(
                    c,
                    hardness=by_id.get(c.record_id),
                    hardness_kind="ifd" if by_id.get(c.record_id) is not None else None,
                )
                for c in candidates
            ]
        else:
            log.info(
                "synthesis %s: the student's endpoint gives no prompt log-probs: hardness by the proxy", run.run_id
            )
    seeds = rank_seeds(candidates, counts, settings, weak, limit=settings.max_seeds)
    texts = _texts(run, {s.candidate.record_id for s in seeds})
    rows = [
        {
            "run": run.run_id,
            "r": s.candidate.record_id,
            "b": rank // settings.batch_size,
            "k": rank,
            "s": s.score,
            "w": list(s.why),
            "c": list(s.candidate.categories),
            "h": s.candidate.hardness,
            "hk": s.candidate.hardness_kind,
            "i": texts[s.candidate.record_id][0],
        }
        for rank, s in enumerate(seeds)
    ]
    with engine.begin() as conn:
        conn.execute(sa.text("delete from synth_seeds where run_id = :r"), {"r": run.run_id})
        if rows:
            conn.execute(
                sa.text(
                    "insert into synth_seeds (run_id, record_id, batch, rank, score, why, categories, hardness,"
                    " hardness_kind, instruction) values (:run, :r, :b, :k, :s, :w, :c, :h, :hk, :i)"
                ),
                rows,
            )
    log.info(
        "synthesis %s: %d seeds of %d tagged records (hardness: %s; weak categories: %s)",
        run.run_id,
        len(rows),
        len(candidates),
        hardness_kind,
        sorted(weak) or "none",
    )
    return sorted({row["b"] for row in rows})


def seeds_summary(engine: Engine, run_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        why = conn.execute(
            sa.text("select w, count(*) from synth_seeds, unnest(why) w where run_id = :r group by w"), {"r": run_id}
        ).all()
    return dict(why)
