"""Run the fault-injection suite and print its results as a Markdown table (the README carries it).

    .venv/bin/python tools/fault_table.py [-k EXPR] [--out FILE]

Runs `pytest tests/faults`; each test writes one JSON line per fault it
injected to the file named by PERPBOT_FAULT_REPORT (fault, what the system did,
time to recover measured from observable state, the invariants that broke),
and pytest's JUnit XML gives each test's outcome, so a test that failed or
was skipped before it could write its line still gets a row. Exits non-zero
when a test failed (an expected failure, xfail, is a known finding: reported,
not fatal).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/faults"


def run_suite(k: str | None) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]], float, int]:
    """(rows the tests wrote, nodeid -> (outcome, message), seconds, pytest's exit code)."""
    with tempfile.TemporaryDirectory(prefix="faults") as tmp:
        report = Path(tmp) / "rows.jsonl"
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", SUITE,
               f"--junitxml={junit}", "-o", "junit_family=xunit2"]
        if k:
            cmd += ["-k", k]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PERPBOT_FAULT_REPORT": str(report)},
                              stdout=sys.stderr, stderr=sys.stderr, check=False)
        took = time.monotonic() - t0
        rows = [orjson.loads(ln) for ln in report.read_bytes().splitlines() if ln.strip()] if report.exists() else []
        outcomes = _outcomes(junit) if junit.exists() else {}
    return rows, outcomes, took, proc.returncode


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname = case.get("classname", "")
        path = classname.replace(".", "/") + ".py"
        nodeid = f"{path}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message") or ""
            elif child.tag == "skipped":
                kind = child.get("type", "")
                message = child.get("message") or ""
                outcome = "xfailed" if "xfail" in kind or message.startswith("xfail") else "skipped"
        out[nodeid] = (outcome, message)
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).replace("|", "\\|").split())


def _outcome_of(nodeid: str, outcomes: dict[str, tuple[str, str]]) -> tuple[str, str]:
    if nodeid in outcomes:
        return outcomes[nodeid]
    for key, value in outcomes.items():  # junit names parametrized tests and paths its own way
        if key.split("::")[-1] == nodeid.split("::")[-1]:
            return value
    return ("unknown", "")


def table(rows: list[dict[str, Any]], outcomes: dict[str, tuple[str, str]]) -> str:
    lines = ["| Fault | What the system did | Time to recover | Invariants held |", "|---|---|---|---|"]
    covered = set()
    for r in rows:
        covered.add(r["test"])
        outcome, message = _outcome_of(r["test"], outcomes)
        rec = r.get("recover_s")
        if rec is None:
            recover = "—"
        elif isinstance(rec, (int, float)):
            recover = f"{rec * 1000:.0f} ms" if rec < 1 else f"{rec:.1f} s"
        else:
            recover = str(rec)
        if r.get("recover_what") and rec is not None:
            recover += f" ({r['recover_what']})"
        problems = list(r.get("problems") or [])
        if not problems and outcome != "failed":
            held = "all held"
        elif outcome == "xfailed":
            held = "FAILED (known finding, xfail): " + "; ".join(problems)
        else:
            held = "FAILED: " + "; ".join(problems or [message])
        for extra in (r.get("finding"),):
            if extra:
                held += f"; finding: {extra}"
        notes = r.get("notes") or []
        if notes:
            held += "; note: " + "; ".join(sorted(set(notes)))
        lines.append(f"| {_cell(r['fault'])} | {_cell(r['did'])} | {_cell(recover)} | {_cell(held)} |")
    for nodeid, (outcome, message) in sorted(outcomes.items()):
        name = nodeid.split("::")[-1]
        if any(t.split("::")[-1] == name for t in covered) or outcome == "passed":
            continue  # a passed test without a row checks the checker, it injects nothing
        verdict = {"skipped": "not run", "failed": "FAILED", "xfailed": "FAILED (known finding, xfail)"}.get(
            outcome, outcome)
        lines.append(f"| {_cell(name)} | — | — | {_cell(verdict + (': ' + message if message else ''))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fault_table", description=__doc__.split("\n\n")[0])
    p.add_argument("-k", help="only the tests matching this pytest expression")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    rows, outcomes, took, code = run_suite(args.k)
    counts: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    text = (table(rows, outcomes) + "\n\n"
            + f"{len(outcomes)} tests in {took:.0f} s: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + " (`.venv/bin/python tools/fault_table.py`)\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    broken = counts.get("failed", 0) > 0 or (code != 0 and not outcomes)  # a failure, or pytest never ran
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
