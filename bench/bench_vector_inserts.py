"""Adding rows to a StoredIndex whose pgvector table exists: inserting into the HNSW graph vs dropping the index
and building it again over all rows. Sets vector_index.REBUILD_FACTOR (rebuild when new x factor >= stored).

    python bench/bench_vector_inserts.py [--new 1000] [--stored 1000,5000,20000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchlib import temporary_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--stored", default="1000,5000,20000")
    args = ap.parse_args()
    from infinstruct.store import vector_index
    from infinstruct.store.db import get_engine
    from infinstruct.store.vector_index import StoredIndex

    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    print("| stored rows | new rows | insert into the index | rebuild the index | insert / rebuild |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with temporary_database() as (url, _):
        engine = get_engine(url)
        for stored in map(int, args.stored.split(",")):
            seconds = {}
            for mode, factor in (("insert", 0), ("rebuild", 10**9)):
                vector_index.REBUILD_FACTOR = factor
                with engine.begin() as conn:
                    index = StoredIndex(conn, "bench_inserts", "pgvector")
                    index.reset()
                    index.add([f"a{i}" for i in range(stored)], unit(stored))
                    t0 = time.monotonic()
                    index.add([f"b{i}" for i in range(args.new)], unit(args.new))
                    seconds[mode] = time.monotonic() - t0
                    index.reset()
            print(
                f"| {stored:,} | {args.new:,} | {seconds['insert']:.2f} s | {seconds['rebuild']:.2f} s "
                f"| {seconds['insert'] / seconds['rebuild']:.2f} |"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
