"""A whole window run as users run it, side by side with ingestr (issue 18).

One 2-hour window of an osmem-server index, each contender a whole process started the way a
user starts it, timed from launch to exit:
- ledgerflow: `ledgerflow run -c NAME` (the installed console script beside this interpreter)
  with an Elasticsearch source, a local stage, a DuckDB target and an SQLite ledger, two ways:
  blocks saved in a benchmark-only PREFECT_HOME and Prefect's ephemeral API started inside the
  run (as a first-time user has it), and against a `prefect server` the benchmark starts (as a
  deployment's worker has it: PREFECT_API_URL set, no API inside the run);
- ingestr 0.15.x (`make bench` installs it under .bench/ingestr), Elasticsearch -> Postgres with
  `--interval-start/--interval-end` on the timestamp field.
Both reach osmem through the same header-rewriting proxy (bench/es_proxy.py). Each run must load
exactly the window's documents (count and distinct ids in its destination; the index also holds
documents just before and just after the window), or the benchmark fails.

Targets, each a ratio within this run: ledgerflow >= 1.0x ingestr's docs/s at 200k documents and
>= 1.5x at 600k; the whole `ledgerflow run`'s peak RSS <= 400 MB, growing <= 1.1x from 200k to
600k. `python -m bench peers --docs 20000` is a quick smoke run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import free_port, median, run_measured, show
from bench.es_extract import document

START = datetime(2025, 3, 9, 10, tzinfo=UTC)
END = START + timedelta(hours=2)
ROOT = Path(__file__).resolve().parent.parent
INGESTR = ROOT / ".bench" / "ingestr" / "bin" / "ingestr"
# The console script installed beside the interpreter running the benchmark ($(BIN)/ledgerflow).
LEDGERFLOW = Path(sys.executable).parent / "ledgerflow"
PREFECT = Path(sys.executable).parent / "prefect"
# osmem's OpenSearch point in time costs the emulator a full pass per page (DESIGN.md, second
# round): `auto` would pick it, and measure osmem instead of ledgerflow. Pinned to the scroll.
PAGING = {"point_in_time": "never", "page_size": 1000, "slices": 2}
PAGING_NOTE = (
    "ledgerflow pages by sliced scroll (point_in_time=never, page 1000, 2 slices); "
    "ingestr by its own scroll (page 1000, 1 slice)"
)


def _moments(n: int) -> list[datetime]:
    """n instants inside the window, then n // 100 just outside it: one second apart before START,
    and from END itself on (a contender that ignores the window's bounds, or reads its end as
    inclusive, loads the wrong count)."""
    step = 7_200_000_000 / n
    inside = [START + timedelta(microseconds=int(i * step)) for i in range(n)]
    edge = max(1, n // 100)
    before = [START - timedelta(seconds=1 + i) for i in range(edge)]
    after = [END + timedelta(seconds=i) for i in range(edge)]
    return inside + before + after


async def _load(url: str, index: str, n: int) -> None:
    from elasticsearch import AsyncElasticsearch
    from ledgerflow.blocks.elasticsearch import PlainJsonNode

    es = AsyncElasticsearch(url, node_class=PlainJsonNode, request_timeout=300)
    await es.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"}}})
    moments = _moments(n)
    for lo in range(0, len(moments), 10_000):
        ops: list[dict[str, Any]] = []
        for i in range(lo, min(len(moments), lo + 10_000)):
            ops += [{"index": {"_index": index, "_id": f"d{i:07d}"}}, document(i, moments[i])]
        result = await es.bulk(operations=ops)
        assert not result["errors"]
    await es.indices.refresh(index=index)
    window = {"range": {"@timestamp": {"gte": START.isoformat(), "lt": END.isoformat()}}}
    count = (await es.count(index=index, query=window))["count"]
    await es.close()
    assert count == n, f"the window of {index} holds {count} documents, not {n}"


def _env(home: Path, api: str | None = None) -> dict[str, str]:
    """The children's environment: this worktree first on the path, a Prefect home of their
    own, and its ephemeral API, or the Prefect server at `api` (no setting inherited from the
    caller)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PREFECT_HOME"] = str(home)
    if api:
        env["PREFECT_API_URL"] = api
    return env


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` on loopback with its own home, as a deployment's workers have
    it; yields its API URL. The server is a process of its own, like ingestr's Postgres."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = home.parent / "prefect-server.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env={**_env(home), "PREFECT_LOGGING_LEVEL": "WARNING"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300  # a new server migrates its database first
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"prefect server did not start: {log.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


async def save_blocks(root: Path, es_url: str, index: str, names: list[str]) -> None:
    """One pipeline per run (each run loads its window into a fresh ledger and warehouse)."""
    from ledgerflow.blocks.config import validate_config
    from ledgerflow.blocks.duckdb_target import DuckDBTarget
    from ledgerflow.blocks.elasticsearch import ElasticsearchSource
    from ledgerflow.blocks.ledger_db import LedgerDatabase
    from ledgerflow.blocks.local_stage import LocalStage

    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        await LedgerDatabase.parse_obj({"url": f"sqlite+aiosqlite:///{folder / 'ledger.db'}"}).save(
            name
        )
        await ElasticsearchSource.parse_obj({"hosts": [es_url], "index": index, **PAGING}).save(
            name
        )
        await LocalStage.parse_obj({"root": str(folder / "stage")}).save(name)
        await DuckDBTarget.parse_obj({"path": str(folder / "warehouse.duckdb")}).save(name)
        await validate_config(
            {
                "pipeline_id": name,
                "timezone": "UTC",
                "granularity": "2h",
                "start": START,
                "end": END,
                "windows_per_run": 1,
                "concurrency": 1,
                "ledger_block": f"ledgerflow-ledger-database/{name}",
                "source_block": f"ledgerflow-elasticsearch-source/{name}",
                "stage_block": f"ledgerflow-local-stage/{name}",
                "target_block": f"ledgerflow-duckdb-target/{name}",
            }
        ).save(name)


@dataclass(frozen=True)
class Run:
    wall: float  # seconds from launch to exit
    rss: float  # the process's own peak RSS (VmHWM), MB
    cpu: float  # user + system CPU seconds of the process: less sensitive to a busy machine


def _timed(args: list[str], env: dict[str, str] | None = None) -> tuple[Run, str]:
    """run_measured, plus the child's CPU time (it is the only child reaped meanwhile)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, out = run_measured(args, cwd=ROOT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, rss, cpu), out


def _ledgerflow(root: Path, env: dict[str, str], name: str, n: int) -> Run:
    """`ledgerflow run -c NAME` as a user types it; then count what landed in DuckDB."""
    import duckdb

    run, out = _timed([str(LEDGERFLOW), "run", "-c", name, "--json"], env)
    result = json.loads(out.strip().splitlines()[-1])
    if result["state"] != "COMPLETED" or len(result["windows"]) != 1:
        raise AssertionError(f"ledgerflow run -c {name} did not load one window: {result}")
    with duckdb.connect(str(root / name / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute(
            "SELECT count(*), count(DISTINCT _id), min(ts), max(ts) FROM events"
        ).fetchone()
    assert row is not None
    _check("ledgerflow", n, *row)
    shutil.rmtree(root / name)
    return run


async def _ingestr(admin: str, proxy: str, index: str, work: Path, n: int) -> Run:
    """ingestr into a throwaway Postgres database; then count what landed there."""
    import asyncpg

    from bench.postgres import fresh_database

    async with fresh_database(admin) as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        dest = dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"
        args = [
            str(INGESTR),
            "ingest",
            "--source-uri",
            f"elasticsearch://{proxy.split('://', 1)[1]}?secure=false",
            "--source-table",
            index,
            "--dest-uri",
            dest,
            "--dest-table",
            "public.events",
            "--incremental-key",
            "@timestamp",
            "--interval-start",
            START.isoformat(),
            "--interval-end",
            END.isoformat(),
            "--yes",
            "--progress",
            "log",
            "--pipelines-dir",
            str(work),
        ]
        run, _ = await asyncio.to_thread(_timed, args)
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                'SELECT count(*), count(DISTINCT id), min("atimestamp"), max("atimestamp") '
                "FROM public.events"
            )
        finally:
            await conn.close()
    assert row is not None
    _check("ingestr", n, *row)
    shutil.rmtree(work, ignore_errors=True)
    return run


def _check(who: str, n: int, rows: int, ids: int, lo: datetime, hi: datetime) -> None:
    """Exactly the window: n rows, n distinct ids, every timestamp in [START, END)."""
    if rows != n or ids != n or lo < START or hi >= END:
        raise AssertionError(
            f"{who} loaded {rows:,} rows with {ids:,} distinct ids between {lo} and {hi}; "
            f"the window [{START}, {END}) holds {n:,} documents, each once"
        )


def _ingestr_admin(stack: contextlib.ExitStack) -> tuple[str | None, str]:
    """A Postgres admin DSN for ingestr's destination, or why ingestr cannot run here."""
    if not INGESTR.exists():
        return (
            None,
            f"ingestr is not installed at {INGESTR.relative_to(ROOT)} (make bench installs it)",
        )
    try:
        from bench.postgres import admin_dsn

        return admin_dsn(stack), ""
    except Exception as exc:  # no local server and no embedded one: say so, run ledgerflow
        return None, f"ingestr skipped: no Postgres for its destination ({exc})"


# ledgerflow runs two ways: as a first-time user runs it (Prefect's ephemeral API, started in
# the process), and as deployed users run it (a worker's flow run talks to a Prefect server).
EPHEMERAL, SERVER, INGESTR_NAME = "ledgerflow", "ledgerflow + server", "ingestr"
CONTENDERS = (EPHEMERAL, SERVER, INGESTR_NAME)


def main(repeat: int = 3, sizes: tuple[int, ...] = (200_000, 600_000)) -> None:
    from osmem_server import OsmemServer

    from bench.es_proxy import serving

    runs: dict[tuple[str, int], list[Run]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledgerflow-peers-")))
        admin, skipped = _ingestr_admin(stack)
        api = stack.enter_context(prefect_server(tmp / "prefect-server"))
        envs = {EPHEMERAL: _env(tmp / "prefect"), SERVER: _env(tmp / "prefect-server", api)}
        server = stack.enter_context(OsmemServer.start(freeze=False))
        proxy = stack.enter_context(serving(server.url))
        for n in sizes:
            index = f"peers{n}"
            asyncio.run(_load(server.url, index, n))
            names = {
                who: [f"peers-{n}-{r}-{i}" for r in range(repeat)] for i, who in enumerate(envs)
            }
            for who, env in envs.items():
                _save(tmp, proxy, index, names[who], env)
            for r in range(repeat):
                # Each contender goes first, second and third in turn.
                for who in CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]:
                    if who in envs:
                        measured = _ledgerflow(tmp, envs[who], names[who][r], n)
                    elif admin is None:
                        continue
                    else:
                        work = tmp / f"ingestr-{n}-{r}"
                        try:
                            measured = asyncio.run(_ingestr(admin, proxy, index, work, n))
                        except RuntimeError as exc:  # it would not run here: one line, go on
                            skipped = f"ingestr could not run here: {str(exc).splitlines()[0]}"
                            admin = None
                            continue
                    runs.setdefault((who, n), []).append(measured)
            server.request("DELETE", f"/{index}")  # free the emulator's memory for the next size
    _report(runs, sizes, repeat, skipped)


def _save(root: Path, proxy: str, index: str, names: list[str], env: dict[str, str]) -> None:
    """Save the pipelines' blocks where their runs will read them (a child process: the
    blocks land in that Prefect home or server, not the caller's)."""
    saved = subprocess.run(
        [sys.executable, "-m", "bench.peers", str(root), proxy, index, *names],
        env=env,
        cwd=ROOT,
        capture_output=True,  # Prefect's first-use migration warnings, unless it fails
        text=True,
    )
    if saved.returncode != 0:
        raise RuntimeError(f"saving the benchmark's blocks failed: {saved.stderr[-2000:]}")


def _report(
    runs: dict[tuple[str, int], list[Run]],
    sizes: tuple[int, ...],
    repeat: int,
    skipped: str,
) -> None:
    rows: list[list[object]] = []
    rate: dict[tuple[str, int], float] = {}
    rss: dict[tuple[str, int], float] = {}
    for n in sizes:
        for who in CONTENDERS:
            measured = runs.get((who, n))
            if not measured:
                continue
            rate[who, n] = median([n / r.wall for r in measured])
            rss[who, n] = median([r.rss for r in measured])
            wall = median([r.wall for r in measured])
            cpu = median([r.cpu for r in measured])
            rows.append([f"{n:,}", who, wall, rate[who, n], cpu, rss[who, n], len(measured)])
    show(
        f"One 2-hour window, whole processes (osmem-server via one proxy), medians of {repeat}",
        [
            "docs in the window",
            "contender",
            "wall (s)",
            "docs/s",
            "CPU (s)",
            "peak RSS (MB)",
            "runs",
        ],
        rows,
    )
    print(PAGING_NOTE)
    if skipped:
        print(skipped)
    targets = {200_000: 1.0, 600_000: 1.5}
    small, big = sizes[0], sizes[-1]
    for who in (EPHEMERAL, SERVER):
        for n in sizes:
            if (INGESTR_NAME, n) in rate:
                ratio = rate[who, n] / rate[INGESTR_NAME, n]
                goal = f" (target >= {targets[n]:.1f})" if n in targets else ""
                print(
                    f"{who}, {n:,} docs: docs/s {ratio:.2f}x ingestr's{goal}; peak RSS "
                    f"{rss[who, n]:.0f} MB vs {rss[INGESTR_NAME, n]:.0f} MB"
                )
        print(
            f"{who}: peak RSS {rss[who, big]:.0f} MB at {big:,} (target <= 400), growth "
            f"{rss[who, big] / rss[who, small]:.2f}x from {small:,} (target <= 1.1)"
        )


if __name__ == "__main__":
    # `python -m bench.peers ROOT ES_URL INDEX NAME...`: save the pipelines' blocks, run by
    # main() in a child so that they land in the benchmark's own PREFECT_HOME.
    root_arg, url_arg, index_arg, *name_args = sys.argv[1:]
    asyncio.run(save_blocks(Path(root_arg), url_arg, index_arg, name_args))
