"""Shared by the benchmark scripts: write one section of BENCHMARKS.md.

Each script owns the section between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``
and rewrites only that, so benchmarks can be rerun one at a time. Every section starts
with the exact command that produced it.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Every figure below was measured by the command printed above its table; `make bench`
reruns them all (slow: it trains the models). Rerun one with its command to refresh its
section alone.
"""


def command_line() -> str:
    """The command that is running, as a user would type it from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {_cores()} cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def target_word_bits(items: list[str]) -> dict[str, int]:
    """``["cortex-m4=16", ...]`` (repeatable ``--word-bits TARGET=BITS``) as a dict."""
    return {t: int(b) for t, _, b in (item.partition("=") for item in items)}


def write_section(name: str, title: str, body: str, path: Path = BENCHMARKS) -> str:
    """Replace (or append) section ``name`` of BENCHMARKS.md; returns the section text."""
    section = (f"<!-- bench:{name} -->\n## {title}\n\nCommand: `{command_line()}`  \n"
               f"Machine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->\n")
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n",
                         re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section)
    path.write_text(text)
    print(section)
    return section


def publish(name: str, title: str, body: str, write: bool) -> None:
    """Write section ``name`` of BENCHMARKS.md (``write``), or only print it with the
    command and machine lines it would have."""
    if write:
        write_section(name, title, body)
    else:
        print(f"Command: `{command_line()}`  \nMachine: {machine()}\n\n{body}")


def checks_sentence(rows: list[dict]) -> str:
    """The sentence under an emulated-chip table: every run agreed, or some did not."""
    if not any(r["problems"] for r in rows):
        return "Every run agreed with the engine and passed the size checks."
    return "**Some runs failed their checks: see the script's output.**"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def run_ebnn(cmd: list[str]) -> Path:
    """Run (or resume, or just load) one ``ebnn ...`` command whose last word is the output
    file, from the repository root with ``src`` on the path, appending its output to
    ``OUT.log``; returns the output path. A failure stops the benchmark with the command."""
    out = ROOT / cmd[-1]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    with log.open("a") as f:
        rc = subprocess.run([sys.executable, "-m", "ebnn", *cmd[1:]], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {rc}); see {log}")
    return out
