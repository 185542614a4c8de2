"""Budgeted architecture search (ebnn.search): budgets, the space, and real small searches
on scikit-learn's digits (a few trials of a few epochs each)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebnn import engine
from ebnn.cli import main
from ebnn.data import load_dataset
from ebnn.deploy import IntegerModel
from ebnn.fold import fold
from ebnn.memory import plan_memory
from ebnn.model import build_model
from ebnn.search import (
    CODE_BYTES,
    Budget,
    BudgetError,
    SearchConfig,
    SearchSpace,
    parse_bytes,
    search,
)
from ebnn.search.budget import MCU_STACK_BYTES
from ebnn.search.census import census, check_feasible
from ebnn.search.report import pareto_front
from ebnn.search.runner import dominating
from ebnn.spec import ModelSpec, load_spec
from ebnn.testing import cli_error_line

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# A small space keeps every trial to a second or two on digits.
SMALL = SearchSpace(max_conv_blocks=2, max_dense_blocks=1, filters=(8, 16), kernels=(3,),
                    units=(32, 64))


def device_footprint(spec: dict, word_bits: int) -> tuple[int, int]:
    """(peak RAM, flash) without a target, recomputed from scratch: fold the network, plan
    its memory, add the microcontroller stack bound and the code-size bound."""
    plan = plan_memory(fold(build_model(ModelSpec.from_dict(spec))), word_bits)
    return (plan.ram_bytes + plan.input_bytes + MCU_STACK_BYTES,
            plan.flash_bytes + CODE_BYTES[None])


# ---- budgets ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("2048", 2048), (2048, 2048), ("2KB", 2048), ("2kb", 2048), ("2 KiB", 2048),
    ("1.5KiB", 1536), ("32KB", 32768), ("1M", 1048576), ("1.5MB", 1572864), ("512B", 512),
    ("0.3KB", 307),  # rounded down: a budget is a ceiling
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0", "positive"), ("-2KB", "cannot read"), (-5, "positive"), ("0.0001B", "positive"),
    ("abc", "cannot read"), ("", "cannot read"), ("2XB", "cannot read"), ("nan", "cannot read"),
    ("1e400", "finite"), ("2 K B", "cannot read"),
])
def test_parse_bytes_rejects(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_bytes(text, "RAM budget")


def test_budget_needs_target_for_instruction_limit():
    with pytest.raises(BudgetError, match="needs --target"):
        Budget.parse("2KB", "32KB", None, "640k")
    assert Budget.parse("2KB", "32KB", "cortex-m4", "640k").max_count == 640_000


# ---- the space ----------------------------------------------------------------------------
def test_space_draws_valid_specs_and_fixes_modes_without_target():
    rng = random.Random(0)
    no_target = SearchSpace().for_target(False)
    with_target = SearchSpace().for_target(True)
    seen_first, seen_modes, seen_words = set(), set(), set()
    for _ in range(300):
        p = no_target.sample(rng)
        assert "word_bits" not in p and not any(k.endswith("_mode") for k in p)
        try:
            spec, wb = no_target.to_spec(p, (1, 28, 28), 10)
        except ValueError:
            continue
        assert wb is None and spec.blocks[-1].type == "output"
        seen_first.add(spec.blocks[0].type)
        q = with_target.sample(rng)
        seen_words.add(q["word_bits"])
        seen_modes |= {v for k, v in q.items() if k.endswith("_mode")}
    assert seen_first == {"conv", "dense"}
    assert seen_modes == {"fused", "materialized"} and seen_words == {8, 16, 32}


def test_census_names_the_smallest_footprint():
    budget = Budget(300, 8192)
    found = census(SearchSpace(), (1, 8, 8), 10, budget)
    assert found.feasible == 0
    with pytest.raises(BudgetError, match="smallest RAM any candidate needs is") as e:
        check_feasible(found, budget, (1, 8, 8))
    least = found.least_ram.footprint.ram
    assert f"{least} B" in str(e.value) and least > budget.ram
    # No random candidate needs less RAM than the reported minimum.
    rng = random.Random(1)
    for _ in range(200):
        try:
            spec, _ = SearchSpace().to_spec(SearchSpace().sample(rng), (1, 8, 8), 10)
        except ValueError:
            continue
        for wb in (8, 16, 32):
            assert device_footprint(spec.to_dict(), wb)[0] >= least


def test_pruning_rule_needs_a_better_trial_with_no_more_ram():
    import optuna

    def trained(number: int, curve: list, ram: int, state=optuna.trial.TrialState.COMPLETE):
        t = optuna.trial.create_trial(state=state, values=[curve[-1], ram] if state ==
                                      optuna.trial.TrialState.COMPLETE else None,
                                      user_attrs={"trained": True, "curve": curve,
                                                  "footprint": {"ram": ram}})
        t.number = number
        return t

    others = [trained(0, [0.80, 0.90, 0.92], 1000),
              trained(1, [0.85, 0.95], 1500, optuna.trial.TrialState.PRUNED)]
    # Trial 0 was 0.90 at epoch 2 with 1000 B: it dominates a trial at 0.85 needing more RAM.
    assert dominating(others, 5, 2, 0.85, 1200, None, 0.02) == 0
    # ... but not one within the margin, nor one that needs less RAM.
    assert dominating(others, 5, 2, 0.89, 1200, None, 0.02) is None
    assert dominating(others, 5, 2, 0.85, 900, None, 0.02) is None
    # Trial 1 (better, but more RAM) only dominates trials needing at least 1500 B.
    assert dominating(others, 5, 2, 0.70, 1600, None, 0.02) == 0
    assert dominating(others[1:], 5, 2, 0.70, 1600, None, 0.02) == 1
    # A trial never prunes itself; epochs nobody reached prune nothing.
    assert dominating(others, 0, 2, 0.10, 5000, None, 0.02) == 1
    assert dominating(others, 5, 4, 0.10, 5000, None, 0.02) is None


def test_impossible_budget_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["search", "--data", "digits", "--ram", "300", "--flash", "8KB", "--trials",
                 "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no candidate fits" in err and "smallest RAM" in err
    assert main(["search", "--data", "digits", "--ram", "0", "--flash", "8KB", "--trials",
                 "2", "--out", str(tmp_path)]) == 2
    assert "must be a positive number of bytes" in capsys.readouterr().err


# ---- real searches ------------------------------------------------------------------------
def _cfg(out: Path, **kw) -> SearchConfig:
    args = dict(data="digits", out=out, ram="800", flash="20KB", trials=3, epochs=2,
                final_epochs=2, space=SMALL, threads=1)
    args.update(kw)
    return SearchConfig(**args)


def _check_within_budget(out: Path, ram: int, flash: int) -> list[dict]:
    rows = json.loads((out / "trials.json").read_text())["trials"]
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front, "a search on digits with this budget must find models"
    for r in front + [r for r in rows if r["status"] == "complete"]:
        got_ram, got_flash = device_footprint(r["spec"], r["word_bits"])
        assert (got_ram, got_flash) == (r["ram"], r["flash"])
        assert got_ram <= ram and got_flash <= flash
        assert (out / "trials" / f"{r['resume_of'] or r['number']:04d}" / "spec.json").exists()
    for r in rows:
        if r["status"] == "rejected":  # rejected before training: no training files
            assert r["ram"] > ram or r["flash"] > flash
            assert r["val_accuracy"] is None
    return rows


def test_search_digits_within_budget_then_resume(tmp_path):
    out = tmp_path / "s"
    result = search(_cfg(out))
    ram, flash = 800, 20 * 1024
    rows = _check_within_budget(out, ram, flash)
    assert result.trained == 3 == sum(r["status"] in ("complete", "pruned") for r in rows)
    assert result.front == pareto_front(result.rows, result.budget)
    for name in ("pareto.md", "pareto.png", "study.db"):
        assert (out / name).stat().st_size > 0
    assert "| trial | model |" in (out / "pareto.md").read_text()

    # The exported best model: its measured footprint, from the files, is within budget.
    best = out / "best"
    summary = json.loads((best / "summary.json").read_text())
    model = IntegerModel.load(best / "model.ebnn")
    plan = plan_memory(model, summary["word_bits"])
    assert plan.ram_bytes + plan.input_bytes + MCU_STACK_BYTES <= ram
    assert plan.flash_bytes + CODE_BYTES[None] <= flash
    assert summary["header"]["ram_bytes"] == plan.ram_bytes
    assert summary["header"]["flash_bytes"] == plan.flash_bytes
    assert summary["fits"] and 0.5 < summary["test_accuracy"] <= 1
    # the deployed model's accuracy, from the fast engine, equals the NumPy engine's
    test = load_dataset("digits", "test")
    assert summary["integer_test_accuracy"] == engine.accuracy(model, test.x, test.y,
                                                               backend="numpy")
    assert summary["trial"] == result.best["number"]
    assert any(p.suffix == ".c" for p in (best / "c").iterdir())

    # Resume: the same study goes on to 5 trained trials and keeps the first ones.
    again = search(_cfg(out, trials=5, final=False))
    assert again.trained == 5
    old = {r["number"]: r for r in rows}
    new = {r["number"]: r for r in again.rows}
    for n, r in old.items():
        assert new[n]["val_accuracy"] == r["val_accuracy"] and new[n]["status"] == r["status"]
    assert max(new) > max(old)
    _check_within_budget(out, ram, flash)


def test_changed_settings_refuse_to_resume(tmp_path):
    out = tmp_path / "s"
    search(_cfg(out, trials=1, epochs=1, final=False))
    with pytest.raises(ValueError, match="other settings.*ram: 800 -> 900"):
        search(_cfg(out, trials=2, epochs=1, ram="900", final=False))


def _study_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_interrupted_search_resumes_the_trial(tmp_path):
    """Ctrl-C during a trial's training; the rerun re-queues it and training continues
    from its checkpoint."""
    out = tmp_path / "s"
    # Two possible candidates (d32, d64): quick models.
    cmd = [sys.executable, "-m", "ebnn.cli", "search", "--data", "digits", "--ram", "800",
           "--flash", "20KB", "--first", "dense", "--units", "32,64", "--max-dense-blocks", "1",
           # Enough epochs that the interrupt below always lands mid-training.
           "--epochs", "80", "--trials", "2", "--final-epochs", "1", "--threads", "1",
           "--out", str(out)]
    # A shell that starts jobs in the background (`make test &`) ignores SIGINT in them, and
    # Python then never raises KeyboardInterrupt: give the search the default handler back.
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Trial 0's resumable checkpoint appears after its first epoch. (Polling the study's
    # SQLite file instead can miss the whole run: its readers see "database is locked"
    # while the search writes every epoch.)
    last = out / "trials" / "0000" / "model.pt.last"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None and not last.exists():
            time.sleep(0.05)
        if proc.poll() is not None or not last.exists():
            pytest.fail(f"trial 0 did not start training (exit {proc.poll()})")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "interrupted" in err, (proc.returncode, err[-2000:])
    assert (out / "trials" / "0000" / "model.pt.last").exists()

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming 1 interrupted trial" in done.stderr
    rows = json.loads((out / "trials.json").read_text())["trials"]
    retry = [r for r in rows if r["resume_of"] == 0]
    assert len(retry) == 1 and retry[0]["status"] == "complete"
    assert retry[0]["curve"][0] is None  # its first epochs were trained before the stop
    assert sum(r["status"] == "complete" for r in rows) == 2
    # A model proposed again is answered from its first trial, never trained twice.
    trained = [r["desc"] for r in rows if r["status"] in ("complete", "pruned")]
    assert len(trained) == len(set(trained))
    for r in rows:
        if r["status"] == "duplicate":
            assert r["desc"] in trained and r["val_accuracy"] is not None


def test_two_workers_share_one_study(tmp_path):
    out = tmp_path / "w"
    result = search(_cfg(out, trials=4, epochs=1, workers=2, final=False))
    rows = _check_within_budget(out, 800, 20 * 1024)
    workers = {r["worker"] for r in rows if r["worker"]}
    assert len(workers) == 2, workers
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers))
    # Two workers may both start the last trial: at most one extra.
    assert 4 <= result.trained <= 5
    states = {state for _, state in _study_rows(out / "study.db")}
    assert states <= {"COMPLETE", "PRUNED", "FAIL"}


# ---- with a target ------------------------------------------------------------------------
def _have(target: str) -> bool:
    from ebnn.targets import get_target

    return get_target(target).available()


@pytest.mark.skipif(not _have("cortex-m4"), reason="arm-none-eabi-gcc not installed")
def test_search_with_target_counts_instructions(tmp_path):
    out = tmp_path / "t"
    result = search(_cfg(out, ram="1KB", flash="16KB", trials=2, epochs=1, final_epochs=1,
                         target="cortex-m4", max_instructions="400k", count_images=2))
    assert result.front
    for r in result.front:
        assert 0 < r["count"] <= 400_000
        assert r["footprint"]["code_source"] == "cortex-m4"
        assert r["flash"] <= 16 * 1024 and r["ram"] <= 1024
    assert result.final["fits"] and result.final["count"] <= 400_000
    assert result.final["footprint"]["code_bytes"] <= CODE_BYTES["cortex-m4"]


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003",
                                    "esp32c3"])
def test_code_size_constant_bounds_real_code(tmp_path, target):
    """CODE_BYTES, used for flash without a target, bounds the code of a deep model at the
    word size where measure_code_bytes found the most code (32 bits)."""
    if not _have(target):
        pytest.skip(f"compiler for {target} not installed")
    from ebnn.search.measure import build_for_target

    conv = {"type": "conv", "filters": 8, "kernel": 3, "padding": 1}
    spec = ModelSpec.from_dict({"input_shape": [1, 12, 12], "classes": 10, "blocks": [
        {**conv, "pool": 2}, {**conv, "pool": 2, "mode": "materialized"}, conv,
        {"type": "dense", "units": 16}, {"type": "dense", "units": 16}, {"type": "output"}]})
    model = fold(build_model(spec))
    m = build_for_target(model, 32, target, tmp_path)
    assert 0 < m.footprint.code_bytes <= CODE_BYTES[target] <= CODE_BYTES[None]
    plan = plan_memory(model, 32, target=target)
    assert m.footprint.ram == plan.ram_bytes + plan.input_bytes + plan.stack_bytes


def test_a_program_over_the_chip_is_measured_not_run_and_the_search_rejects_it(tmp_path):
    """Tables under the flash budget, program over the chip: linked for its sizes, with
    ``unfit`` saying by how much, and no input run (the search rejects such a trial)."""
    if not _have("atmega328p"):
        pytest.skip("compiler for atmega328p not installed")
    import numpy as np

    from ebnn.search.measure import build_for_target

    # a candidate the search met: 26 KB of tables, a program of about 35 KB
    spec = ModelSpec.from_dict({"input_shape": [1, 28, 28], "classes": 10, "blocks": [
        {"type": "conv", "filters": 8, "kernel": 5, "padding": 2, "pool": 2,
         "mode": "materialized"}, {"type": "dense", "units": 128}, {"type": "output"}]})
    model = fold(build_model(spec))
    x = np.zeros((1, 1, 28, 28), np.uint8)
    m = build_for_target(model, 8, "atmega328p", tmp_path, x)
    assert m.unfit.startswith("does not fit the Microchip ATmega328P") and "flash" in m.unfit
    assert m.count is None and not m.counts
    assert m.footprint.table_bytes < 32768  # what the search checks before building


def test_a_search_starts_from_known_models(tmp_path, capsys):
    """params_of inverts to_spec for presets in the space (2-D and 1-D), names what is
    outside it, and --start-from trains those shapes first."""
    space = SearchSpace(filters=(8, 16, 32, 64), kernels=(3, 5, 7), pools=(1, 2, 4),
                        units=(64, 128), max_conv_blocks=3)
    for name in ("mnist-fast", "digits", "imu-1d", "ebnn-mnist"):
        spec = load_spec(name)
        got, _ = space.to_spec(space.params_of(spec), spec.input_shape, spec.classes)
        assert got.to_dict()["blocks"] == spec.to_dict()["blocks"], name
    with pytest.raises(ValueError, match="conv1_filters = 64 is outside the search space "
                                         r"\(8, 16, 32\)"):
        SearchSpace(filters=(8, 16, 32)).params_of(load_spec("mnist-2kb"))
    rect = ModelSpec.from_dict({"input_shape": [1, 12, 12], "classes": 3, "blocks": [
        {"type": "conv", "filters": 8, "kernel": [3, 5], "padding": 0, "pool": 2},
        {"type": "output"}]})
    with pytest.raises(ValueError, match="not ones this search proposes"):
        space.params_of(rect)

    out = tmp_path / "s"
    result = search(_cfg(out, trials=2, epochs=1, final=False, seed_trials=0,
                         start_from=("digits",), space=SearchSpace(
                             max_conv_blocks=2, max_dense_blocks=1, filters=(8, 16, 32),
                             kernels=(3,), units=(32, 64))))
    first = min((r for r in result.rows if r["status"] in ("complete", "pruned")),
                key=lambda r: r["number"])
    digits = load_spec("digits").to_dict()["blocks"]
    assert first["spec"]["blocks"] == digits
    capsys.readouterr()
    line = cli_error_line(capsys, ["search", "--data", "digits", "--ram", "800", "--flash",
                                   "20KB", "--trials", "1", "--start-from", "mnist-2kb",
                                   "--filters", "8,16", "--out", str(tmp_path / "t")])
    assert line.endswith("conv1_filters = 64 is outside the search space (8, 16)")
    assert not (tmp_path / "t").exists()  # checked before anything is written


@pytest.mark.parametrize("target", ["atmega328p", "esp32c3"])
def test_the_search_times_a_model_as_ebnn_bench_does(tmp_path, target):
    """Same popcount, word and early exit as the deployed build: the search's count is
    bench_on_target's up to the harness around the call (a 4x slower popcount on the
    AVR once rejected good candidates for time)."""
    if not _have(target):
        pytest.skip(f"compiler for {target} not installed")
    from ebnn.mcu import bench_on_target
    from ebnn.search.measure import build_for_target
    from ebnn.testing import calibrated_random_model

    ds = load_dataset("digits", "test")
    model = fold(calibrated_random_model(load_spec("digits")))
    m = build_for_target(model, 8, target, tmp_path, ds.x[:4])
    bench = bench_on_target(model, target, ds.x[:4], word_bits=8, early_exit=False)
    per_image = bench.get("instructions_per_inference") or bench["cycles_per_inference"]
    assert m.count == pytest.approx(per_image, rel=0.01)
