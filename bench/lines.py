"""Orchestration cost per window on both Prefect lines, side by side in one run.

The orchestration suite (64 empty windows at concurrency 8: a claim and a count check each, so
nearly all the time is Prefect's) runs in the Prefect 2 virtualenv and the Prefect 3 one in turn,
`repeat` times each, interleaved so that a busy machine weighs on both alike. Each run is a fresh
process with its own temporary Prefect API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import median, show
from bench.orchestration import CONCURRENCY, WINDOWS

ROOT = Path(__file__).resolve().parent.parent
LINES = {"Prefect 2": ".venv", "Prefect 3": ".venv3"}
PROBE = (
    "import json; from importlib.metadata import version; "
    "from bench.orchestration import measure; plain, flows = measure(1); "
    "print(json.dumps({'prefect': version('prefect'), 'plain': plain[0], 'flow': flows[0]}))"
)


def _python(venv: str) -> Path:
    python = ROOT / venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"bench lines: {python} is missing; `make install` and `make install PREFECT=3` "
            "create both virtualenvs"
        )
    return python


def _once(python: Path) -> dict[str, float | str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(python), "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"bench lines: the orchestration probe failed under {python}")
    result: dict[str, float | str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(repeat: int = 3) -> None:
    pythons = {line: _python(venv) for line, venv in LINES.items()}
    runs: dict[str, list[dict[str, float | str]]] = {line: [] for line in LINES}
    for _ in range(repeat):
        for line, python in pythons.items():
            runs[line].append(_once(python))
    rows = []
    for line, results in runs.items():
        flow = median([float(r["flow"]) for r in results])
        plain = median([float(r["plain"]) for r in results])
        name = f"{line} ({results[0]['prefect']})"
        rows.append([name, plain, flow, flow / WINDOWS, flow / plain])
    show(
        f"orchestration on both Prefect lines: {WINDOWS} empty windows at concurrency "
        f"{CONCURRENCY}, median of {repeat} fresh processes each, interleaved",
        ["line", "plain asyncio (s)", "flow (s)", "flow per window (s)", "flow / plain"],
        rows,
    )
