"""The search shared through a real PostgreSQL server (the ``postgres`` fixture): several
``ebnn search`` processes, as on several machines, each with its own output directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebnn.search.storage import make_storage

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Small dense models on digits: a trial is a second or two.
BASE = ["--data", "digits", "--ram", "800", "--flash", "20KB", "--first", "dense",
        "--units", "16,32,64", "--max-dense-blocks", "2", "--final-epochs", "1",
        "--threads", "1", "--heartbeat", "1"]


def _cmd(out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ebnn", "search", *BASE, "--storage", url, "--out", str(out),
            *extra]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, what: str,
              timeout: float = 300) -> Path:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    pytest.fail(f"{what} did not happen (exit {proc.poll()}): {err[-2000:]}")


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    return err


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "trials.json").read_text())["trials"]


@pytest.mark.slow
def test_two_processes_share_one_study(postgres, tmp_path):
    url = postgres.new_database()
    make_storage(url)  # Optuna's tables, so that both processes can start at once
    main_out, other_out = tmp_path / "main", tmp_path / "other"
    args = ("--trials", "5", "--epochs", "8", "--prune-after", "8")
    main = _start(_cmd(main_out, url, *args))
    other = _start(_cmd(other_out, url, *args, "--no-final"))
    err_other = _finish(other)
    _finish(main)
    rows = _rows(main_out)
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    trained = [r for r in rows if r["status"] in ("complete", "pruned")]
    # Both processes trained trials of the one study, and the report has them all.
    assert len({r["worker"] for r in trained}) == 2, [(r["number"], r["worker"]) for r in rows]
    assert 5 <= len(trained) <= 6  # two processes may both start the last trial
    for r in trained:
        folder = main_out if (main_out / "trials" / f"{r['number']:04d}").exists() else other_out
        assert (folder / "trials" / f"{r['number']:04d}" / "model.pt").exists()
    # The final model is trained and exported once, by the main process.
    assert (main_out / "best" / "model.ebnn").exists()
    assert not (other_out / "best").exists() and "final model" not in err_other


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_rerun_resumes(postgres, tmp_path):
    url = postgres.new_database()
    main_out, other_out = tmp_path / "main", tmp_path / "other"
    # Enough epochs that the kill below lands while the worker trains its first trial.
    args = ("--trials", "3", "--epochs", "25", "--prune-after", "25")
    other = _start(_cmd(other_out, url, *args, "--no-final"))
    main = None
    try:
        last = _wait_for((other_out, "trials/*/model.pt.last"), other,
                         "the worker's first epoch")
        main = _start(_cmd(main_out, url, *args))  # joins while the worker trains
        os.killpg(other.pid, signal.SIGKILL)  # a machine that dies mid-trial
        other.communicate(timeout=60)
    except BaseException:
        for proc in (other, main):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        raise
    killed = int(last.parent.name)
    err = _finish(main)
    assert other.returncode == -signal.SIGKILL
    rows = {r["number"]: r for r in _rows(main_out)}
    # The killed trial is marked failed, and a retry of the same model trained it here.
    assert rows[killed]["status"] == "failed", rows[killed]
    retries = [r for r in rows.values() if r["resume_of"] == killed]
    assert len(retries) == 1 and retries[0]["status"] == "complete", retries
    assert retries[0]["desc"] == rows[killed]["desc"]
    assert retries[0]["worker"] != rows[killed]["worker"]
    assert sum(r["status"] in ("complete", "pruned") for r in rows.values()) == 3
    assert (main_out / "best" / "model.ebnn").exists() and "final model" in err

    # Rerunning the killed process's command resumes the study: it is complete, so the
    # process only writes its report (all trials, nothing lost) and trains nothing.
    rerun = subprocess.run(_cmd(other_out, url, *args, "--no-final"), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "3/3 trials trained so far" in rerun.stderr
    assert {r["number"]: r["status"] for r in _rows(other_out)} == \
        {n: r["status"] for n, r in rows.items()}
    assert not (other_out / "best").exists()
