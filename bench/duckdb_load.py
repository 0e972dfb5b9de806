"""What a DuckDB load needs by the table's width, against what the target's "auto" gives it.

DuckDB cannot spill the column segments a load is filling, so a load needs a memory limit that
grows with the number of columns, whatever the rows. For each width, a window of short keyword
fields (an ECS-style log line) is staged as Parquet, and the smallest `memory_limit` under which
the target's load succeeds, into a table that holds an earlier window, is found by bisection
(to 4 MiB). It is compared with the limit `memory_limit: "auto"` sets for one load of that
width (`DuckDBTarget`: 64 MiB, plus 1 MiB per column, and 1.5 times the largest staged row group
and the row group the rows join). Each file is one row group of 30,000 rows, larger than the
stage's own. Target: auto >= 1.2x the need at every width.
`python -m bench duckdb --docs 50 200` measures two widths.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from ledgerflow.blocks.duckdb_common import out_of_memory

from bench.common import show

ROWS = 30_000
TARGET = 1.2


def _stage(path: Path, columns: int) -> None:
    fields = {
        f"field_{c:03d}": pa.array([f"v{(i * 31 + c) % 99991:07d}" for i in range(ROWS)])
        for c in range(columns)
    }
    pq.write_table(pa.table(fields), path)


def _loads(stage: Path, db: Path, mib: int) -> bool:
    for leftover in (db, db.with_suffix(".duckdb.wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect(str(db), config={"memory_limit": f"{mib}MiB", "threads": 1})
    try:
        # An earlier window: the load's rows join the table's last row group, the worse case.
        con.execute("CREATE TABLE t AS SELECT * FROM read_parquet(?) LIMIT 10", [str(stage)])
        con.execute("BEGIN")
        con.execute("INSERT INTO t BY NAME SELECT * FROM read_parquet(?)", [str(stage)])
        con.execute("COMMIT")
        return True
    except duckdb.Error as exc:
        if out_of_memory(exc):  # while inserting, or at the COMMIT ("failed to pin block")
            return False
        raise
    finally:
        con.close()


def need_mib(stage: Path, db: Path) -> int:
    """The smallest limit (to 4 MiB) under which the load succeeds."""
    low, high = 8, 4096  # fails at `low`, succeeds at `high`
    if not _loads(stage, db, high):
        raise RuntimeError(f"the load failed even under {high} MiB")
    while high - low > 4:
        middle = (low + high) // 2
        if _loads(stage, db, middle):
            high = middle
        else:
            low = middle
    return high


def main(repeat: int = 1, sizes: tuple[int, ...] = (20, 50, 200, 400)) -> None:
    """`sizes` are the widths (columns); the need does not vary between runs, so one each."""
    from ledgerflow.blocks.duckdb_common import load_shape, memory_bytes
    from ledgerflow.blocks.duckdb_target import AUTO_BASE, load_memory

    rows: list[list[str]] = []
    misses = []
    with tempfile.TemporaryDirectory(prefix="ledgerflow-duckdb-") as folder:
        for columns in sizes:
            stage, db = Path(folder) / f"w{columns}.parquet", Path(folder) / "w.duckdb"
            _stage(stage, columns)
            con = duckdb.connect()
            try:
                shape = load_shape(con, [str(stage)])
            finally:
                con.close()
            need = need_mib(stage, db)
            auto = (memory_bytes(AUTO_BASE) + load_memory(shape, ROWS)) // 2**20
            ratio = auto / need
            if ratio < TARGET:
                misses.append(columns)
            rows.append([f"{columns}", f"{need}", f"{auto}", f"{ratio:.2f}", f">= {TARGET}"])
    show(
        f"DuckDB load: memory_limit needed by width ({ROWS:,} rows of short keywords)",
        ["columns", "need (MiB)", "auto (MiB)", "auto / need", "target"],
        rows,
    )
    verdict = f"MISSES the target at {misses} columns" if misses else "meets the target"
    print(f"duckdb: auto {verdict}")
