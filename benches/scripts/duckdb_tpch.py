#!/usr/bin/env python3
"""TPC-H's 22 queries on DuckDB over the Parquet files `dirk-benches tpch --write-parquet` (or
COPY) makes: the bar Dirk's figures are compared with in benches/README.md.

    python3 -m venv ~/.cache/dirk/duckdb-venv && ~/.cache/dirk/duckdb-venv/bin/pip install duckdb
    ~/.cache/dirk/duckdb-venv/bin/python benches/scripts/duckdb_tpch.py /tmp/tpch10 --memory-limit 6GB

The queries are read from dtable/src/tpch.rs (the `QUERIES` array), so both systems run the
same text. Views over each table's directory (`DIR/<table>/*.parquet`) stand in for tables.
Prints each query's time and row count, then the total.
"""

import argparse
import pathlib
import re
import time

import duckdb

TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]


def queries(repo: pathlib.Path) -> list[str]:
    text = (repo / "dtable" / "src" / "tpch.rs").read_text()
    body = text[text.index("pub const QUERIES") :]
    body = body[: body.index("];")]
    found = re.findall(r'^\s*"((?:[^"\\]|\\.)*)",?\s*$', body, re.M)
    if len(found) != 22:
        raise SystemExit(f"found {len(found)} queries in tpch.rs, not 22")
    return [q.replace('\\"', '"') for q in found]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("parquet", type=pathlib.Path, help="directory with one directory per table")
    p.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 6GB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--spill-dir", default=None, help="DuckDB temp_directory")
    a = p.parse_args()
    repo = pathlib.Path(__file__).resolve().parents[2]
    con = duckdb.connect()
    if a.memory_limit:
        con.execute(f"SET memory_limit = '{a.memory_limit}'")
    if a.threads:
        con.execute(f"SET threads = {a.threads}")
    if a.spill_dir:
        con.execute(f"SET temp_directory = '{a.spill_dir}'")
    for t in TABLES:
        con.execute(
            f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{a.parquet / t}/*.parquet')"
        )
    total = 0.0
    for i, q in enumerate(queries(repo), 1):
        started = time.perf_counter()
        rows = len(con.execute(q).fetchall())
        took = time.perf_counter() - started
        total += took
        print(f"q{i:02}  {took:8.3f} s  {rows} rows", flush=True)
    print(f"total {total:.3f} s (memory_limit={a.memory_limit or 'default'})")


if __name__ == "__main__":
    main()
