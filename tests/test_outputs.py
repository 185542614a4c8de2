"""Outputs are atomic, have one writer, follow the umask and respect read-only targets.

Commands are killed (SIGKILL) at every named step of their writes
(``EBNN_FAULT_INJECT``, see :mod:`ebnn.fileio`) and after random delays; afterwards the
output is always the old complete one or the new complete one, and the next run
succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ebnn.deploy import IntegerModel
from ebnn.fileio import OutputError, atomic_write_bytes, staged_directory, stale_temporaries
from ebnn.fold import fold
from ebnn.lock import OutputBusyError, lock_path, output_lock
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model

SPEC = ModelSpec.from_dict({"name": "tiny", "input_shape": [1, 8, 8], "classes": 4, "blocks": [
    {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "pool": 2},
    {"type": "output"}]})
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def ebnn(*args: str, fault: str | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if fault:
        env["EBNN_FAULT_INJECT"] = fault
    return subprocess.run([sys.executable, "-m", "ebnn.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def cli_error(capsys, argv: list[str], words: str) -> None:
    """``ebnn ARGV`` in this process: exit 2 and one line naming ``words``."""
    from ebnn.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebnn: error: ") and err.count("\n") == 1 and words in err, err


def one_line_error(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ebnn: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} \
        if d.exists() else {}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        path = d / f"{name}.ebnn"
        m = fold(calibrated_random_model(SPEC, seed=seed))
        m.name = "tiny"  # same file names, different contents
        m.save(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The complete exports of both models, as the reference sets."""
    d = tmp_path_factory.mktemp("ref")
    ref = {}
    for name, path in models.items():
        assert ebnn("export", str(path), "--out", str(d / name)).returncode == 0
        ref[name] = snapshot(d / name)
    assert ref["a"] != ref["b"] and ref["a"].keys() == ref["b"].keys()
    return ref


# ---- permissions and read-only targets ---------------------------------------------------
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_umask_permissions(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        with staged_directory(tmp_path / "d") as d:
            (d / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == mode | (0o111 & ~mask)
    assert (tmp_path / "d" / "g").stat().st_mode & 0o777 == mode


def test_read_only_targets_are_refused(models, tmp_path, capsys):
    target = tmp_path / "m.ebnn"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    cli_error(capsys, ["fold", str(models["a"]), "--out", str(target)], "read-only")
    assert target.read_bytes() == b"keep me"
    with pytest.raises(OutputError, match="read-only"):
        IntegerModel.load(models["a"]).save(target)
    out = tmp_path / "c"
    out.mkdir()
    out.chmod(0o555)
    cli_error(capsys, ["export", str(models["a"]), "--out", str(out)], "read-only")
    assert list(out.iterdir()) == []


def test_outputs_of_the_wrong_kind_are_refused_before_work(models, tmp_path, capsys):
    (tmp_path / "dir.pt").mkdir()
    t0 = time.monotonic()
    one_line_error(ebnn("train", "--data", "digits", "--model", "digits", "--epochs", "50",
                        "--out", str(tmp_path / "dir.pt")), "directory")
    assert time.monotonic() - t0 < 60  # refused before loading data or training
    cli_error(capsys, ["fold", str(models["a"]), "--out", str(tmp_path / "dir.pt")],
              "directory")
    (tmp_path / "file").write_text("x")
    cli_error(capsys, ["export", str(models["a"]), "--out", str(tmp_path / "file")], "file")


# ---- one writer ---------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first(models, tmp_path, capsys):
    out = tmp_path / "m.ebnn"
    with output_lock(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            with output_lock(out):
                pass
        one_line_error(ebnn("fold", str(models["a"]), "--out", str(out)), f"pid {os.getpid()}")
        cli_error(capsys, ["export", str(models["a"]), "--out", str(out)], "another")
        assert not out.exists()
    assert not lock_path(out).exists()
    from ebnn.cli import main

    assert main(["fold", str(models["a"]), "--out", str(out)]) == 0


def test_a_lock_left_by_a_killed_writer_does_not_block(models, tmp_path):
    out = tmp_path / "m.ebnn"
    proc = ebnn("fold", str(models["a"]), "--out", str(out), fault="write:partial")
    assert proc.returncode == -signal.SIGKILL
    assert lock_path(out).exists() and stale_temporaries(out)  # what the kill left
    assert ebnn("fold", str(models["a"]), "--out", str(out)).returncode == 0
    assert not stale_temporaries(out) and not lock_path(out).exists()
    assert out.read_bytes() == models["a"].read_bytes()


# ---- kills at every step --------------------------------------------------------------------
def killed_at(point: str, work) -> int:
    """Run ``work()`` in a forked child that SIGKILLs itself at ``point``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest cleanup, no exception escapes
        try:
            os.environ["EBNN_FAULT_INJECT"] = point
            work()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def write_set(d: Path, files: dict[str, bytes]) -> None:
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)


EXPORT_POINTS = ["export:file:1", "export:file:2", "publish:before-swap",
                 "publish:after-swap", "publish:before-rename"]


def test_export_killed_at_each_step_leaves_a_complete_set(models, exports, tmp_path):
    """Into a directory holding an older export and a file of the user's, and into a new
    directory: after a kill at each step the set is the old one or the new one."""
    from ebnn.codegen import export_c

    new = IntegerModel.load(models["b"])
    killed = 0
    for k, point in enumerate(EXPORT_POINTS):
        out, first = tmp_path / f"c{k}", tmp_path / f"first{k}"
        write_set(out, {**exports["a"], "main.c": b"/* the user's own file */"})
        for target in (out, first):
            status = killed_at(point, lambda t=target: export_c(new, t))
            killed += os.WIFSIGNALED(status)
            files = snapshot(target)
            assert files.pop("main.c", b"/* the user's own file */") == \
                b"/* the user's own file */"
            assert files in ({}, exports["a"], exports["b"]), (point, sorted(files))
        assert snapshot(first) in ({}, exports["b"])
    assert killed == len(EXPORT_POINTS) + 2  # each point is passed, on one path or both
    # The next locked run clears what the kills left and completes.
    assert stale_temporaries(tmp_path / "c0")
    assert ebnn("export", str(models["b"]), "--out", str(tmp_path / "c0")).returncode == 0
    files = snapshot(tmp_path / "c0")
    assert files.pop("main.c") == b"/* the user's own file */"
    assert files == exports["b"] and not stale_temporaries(tmp_path / "c0")


def test_export_killed_after_random_delays(models, exports, tmp_path):
    out = tmp_path / "c"
    write_set(out, exports["a"])
    rng = np.random.default_rng(0)
    for k in range(4):
        src = models["b" if k % 2 == 0 else "a"]
        proc = subprocess.Popen([sys.executable, "-m", "ebnn.cli", "export", str(src),
                                 "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.5, 3.0)))
        proc.kill()
        proc.wait(timeout=60)
        assert snapshot(out) in (exports["a"], exports["b"]), k


@pytest.mark.parametrize("point", ["write:partial", "write:before-rename",
                                   "write:after-rename"])
def test_fold_killed_at_each_step_leaves_old_or_new(models, tmp_path, point):
    out = tmp_path / "m.ebnn"
    out.write_bytes(models["a"].read_bytes())
    new = IntegerModel.load(models["b"])
    status = killed_at(point, lambda: new.save(out))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert out.read_bytes() in (models["a"].read_bytes(), models["b"].read_bytes())
    IntegerModel.load(out)


@pytest.mark.slow
def test_train_killed_while_writing_resumes_to_the_same_model(tmp_path):
    """A kill inside the 3rd checkpoint write (the best model of epoch 2, after epoch 1's
    best model and training state): the files present load, and the rerun resumes from
    epoch 1 and ends with the weights of an uninterrupted run."""
    args = ["train", "--data", "digits", "--model", "digits", "--epochs", "3",
            "--no-progress", "--threads", "1"]
    ref = tmp_path / "ref.pt"
    assert ebnn(*args, "--out", str(ref), timeout=300).returncode == 0
    out = tmp_path / "m.pt"
    from ebnn.checkpoint import load_checkpoint

    for n in (3,):
        proc = ebnn(*args, "--out", str(out), fault=f"write:partial:{n}", timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        for path in (out, out.with_name("m.pt.last")):
            if path.exists():
                load_checkpoint(path)
    assert ebnn(*args, "--out", str(out), timeout=300).returncode == 0
    a, b = load_checkpoint(ref).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_export_into_a_project_directory_keeps_its_folders(models, exports, tmp_path):
    """A target with folders of its own is updated file by file (nothing copied, nothing
    of the user's touched)."""
    from ebnn.codegen import export_c

    out = tmp_path / "project"
    write_set(out, exports["a"])
    (out / "src").mkdir()
    (out / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    export_c(IntegerModel.load(models["b"]), out)
    assert snapshot(out) == exports["b"]
    assert (out / "src" / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert not stale_temporaries(out)


@pytest.mark.slow
def test_search_killed_while_writing_completes_on_rerun(tmp_path):
    """Kills inside the 1st and 5th atomic writes of a tiny search (a trial checkpoint;
    the final model's): whatever exists afterwards is complete, and rerunning the same
    command finishes the search with a loadable best model and C export."""
    from ebnn.checkpoint import load_checkpoint

    out = tmp_path / "s"
    args = ["search", "--data", "digits", "--ram", "800", "--flash", "20KB", "--trials", "1",
            "--epochs", "1", "--final-epochs", "1", "--max-conv-blocks", "1",
            "--max-dense-blocks", "1", "--filters", "8", "--kernels", "3", "--units", "32",
            "--out", str(out)]
    for n in (1, 5):
        proc = ebnn(*args, fault=f"write:partial:{n}", timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        for path in out.rglob("*"):
            if path.name.startswith("."):
                continue  # the killed writer's temporary file
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt" or path.name.endswith(".pt.last"):
                load_checkpoint(path)
            elif path.suffix == ".ebnn":
                IntegerModel.load(path)
    proc = ebnn(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "best" / "summary.json").read_text())
    IntegerModel.load(out / "best" / "model.ebnn")
    assert sorted(p.name for p in (out / "best" / "c").iterdir()) == sorted(
        Path(p).name for p in summary["files"]["c"])
