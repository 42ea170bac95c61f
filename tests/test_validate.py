"""``asgd-sim validate``: the checks pass, a wrong prediction fails, parameters reach the predictions.

The whole ``validate --quick`` (every check of THEORY.md through the real simulator) runs in the
``slow`` test at the end: that is how the quick validation is part of ``make test``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asgd_sim.validation import theory
from asgd_sim.cli import main
from asgd_sim.validation.catalog import CHECKS, checks, select
from asgd_sim.validation.framework import resolve_params, verdict


def rows_of(out) -> list[dict]:
    report = json.loads((out / "validation.json").read_text())
    return [row for check in report["checks"] for row in check["rows"]]


def test_a_wrong_prediction_fails(tmp_path, capsys, monkeypatch) -> None:
    right = theory.backup_workers_expected_time
    monkeypatch.setattr(theory, "backup_workers_expected_time", lambda N, b, mu=1.0: 1.1 * right(N, b, mu))
    code = main(["validate", "--only", "c10", "--set", "rounds=300", "--set", "backups=0,4", "--out", str(tmp_path)])
    assert code == 1
    printed = capsys.readouterr().out
    assert printed.count("FAIL") >= 2 and "FAILED: C10" in printed
    assert not any(row["passed"] for row in rows_of(tmp_path))


def test_set_changes_the_parameters_and_the_prediction(tmp_path) -> None:
    code = main(["validate", "--only", "C12", "--out", str(tmp_path), "--set", "workers=3", "--set", "lognormal_workers=3",
                 "--set", "lock_updates=20000", "--set", "sync_updates=2000", "--set", "C12.hold=0.2"])
    assert code in (0, 1)  # small sizes: the verdicts are not the point here
    rows = {row["quantity"]: row for row in rows_of(tmp_path)}
    expected = theory.closed_queue_lock(3, 1.0, 0.2)
    assert rows["lock throughput X, M=3, exponential"]["predicted"] == expected["throughput"]
    assert rows["lock wait Wq, M=3, exponential"]["predicted"] == expected["wait"]
    assert not any("M=5" in quantity for quantity in rows)
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["checks"][0]["params"]["workers"] == [3] and report["checks"][0]["params"]["hold"] == 0.2


def test_parameters_are_typed_and_per_check() -> None:
    chosen = select("C10,C12")
    params = resolve_params(chosen, quick=True, sets=["rounds=1000", "C12.workers=4,8", "tolerance=0.05"])
    assert params["C10"]["rounds"] == 1000 and params["C12"]["workers"] == (4, 8)
    assert params["C10"]["tolerance"] == params["C12"]["tolerance"] == 0.05  # unqualified: every check that has it
    full = resolve_params(chosen, quick=False, sets=[])
    assert full["C12"]["lock_updates"] == checks()["C12"].full["lock_updates"] > params["C12"]["lock_updates"]


@pytest.mark.parametrize("argv, message", [
    (["--only", "C18"], "unknown check 'C18'; did you mean"),
    (["--only", "C7", "--set", "long=100"], "C7.long = 100: must be > C7.short (300)"),
    (["--only", "C12", "--set", "worker=32"], "unknown parameter 'worker' in 'worker=32'; did you mean 'workers'?"),
    (["--only", "C12", "--set", "workers=many"], "C12.workers = 'many': must be a whole number"),
    (["--only", "C12", "--set", "workers=0"], "C12.workers = 0: must be >= 1"),
    (["--only", "C12", "--set", "C4.k=2"], "check C4 is not selected"),
    (["--only", "C10", "--set", "rounds"], "must be name=value"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys) -> None:
    assert main(["validate", "--out", str(tmp_path / "never"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()


def test_unknown_parameter_lists_the_checks_parameters(capsys) -> None:
    assert main(["validate", "--only", "C12", "--set", "wrkers=3"]) == 2
    err = capsys.readouterr().err
    assert "C12: means, sync_updates, workers, think, hold" in err


def test_list_shows_checks_and_parameters(capsys) -> None:
    assert main(["validate", "--list", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "C12 " in printed and "lock_updates = 200000" in printed and "C7 " in printed


def test_the_catalog_lists_every_check_in_order() -> None:
    assert [check.name for check in CHECKS] == [f"C{i}" for i in range(1, 18)]
    assert list(checks()) == [check.name for check in CHECKS] and select(None) == list(CHECKS)
    assert all(set(check.quick) <= set(check.full) and set(check.limits) <= set(check.full) for check in CHECKS)


def test_list_and_timing_checks_do_not_import_jax() -> None:
    # `validate --list` and the timing-only checks must stay cheap: JAX only inside the checks that need it.
    code = ("import io, sys\n"
            "from asgd_sim.validation.command import run_cli\n"
            "assert run_cli(None, True, None, [], list_only=True, stream=io.StringIO()) == 0\n"
            "from asgd_sim.validation.catalog import select\n"
            "from asgd_sim.validation.framework import resolve_params, run_checks\n"
            "chosen = select('C10,C13')\n"
            "run_checks(chosen, resolve_params(chosen, True, ['rounds=100', 'backups=0', 'C13.workers=10']))\n"
            "print(sorted(m for m in ('jax', 'matplotlib') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("predicted, simulated, tol, kind, ok", [
    (1.0, 1.019, 0.02, "rel", True), (1.0, 1.021, 0.02, "rel", False), (0.0, 1e-7, 1e-6, "abs", True),
    (0.0, 2e-6, 1e-6, "abs", False), (4, 4, 0, "max", True), (4, 5, 0, "max", False), (10.0, 9.0, 0, "min", False),
    (True, True, 0, "abs", True), (True, False, 0, "abs", False), (1.0, float("nan"), 0.5, "rel", False),
])
def test_verdict(predicted, simulated, tol, kind, ok) -> None:
    assert verdict(predicted, simulated, tol, kind) is ok


@pytest.mark.slow
def test_quick_validation_passes(tmp_path, capsys) -> None:
    # Every check of THEORY.md at the --quick sizes (about a minute on 2 cores): `make test` runs it.
    code = main(["validate", "--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = rows_of(tmp_path)
    assert {row["check"] for row in rows} == set(checks())
    assert all(row["passed"] for row in rows)
    for figure in ("c1_critical_step", "c2_staleness_histograms", "c4_dutta_times", "c8_ssp_throughput", "c12_lock"):
        assert (tmp_path / f"{figure}.png").is_file()
    # The report (one run serves both: the whole --quick battery takes ~2 minutes on 2 cores).
    assert "FAIL" not in printed and printed.count("PASS") >= 20
    assert "round time, N=50 of N+b, b=8" in printed  # one line per row, with the prediction in it
    b8 = next(row for row in rows if row["check"] == "C10" and row["quantity"].endswith("b=8"))
    assert b8["predicted"] == pytest.approx(theory.backup_workers_expected_time(50, 8))
    assert b8["kind"] == "rel" and b8["tolerance"] == 0.015 and b8["seconds"] > 0
    markdown = (tmp_path / "validation.md").read_text()
    assert "| C10 |" in markdown and "c2_staleness_histograms.png" in markdown
    html = (tmp_path / "validation.html").read_text()
    assert "data:image/png;base64," in html  # figures embedded ...
    assert "src='http" not in html and 'src="http' not in html and "<link" not in html  # ... nothing external
    assert (tmp_path / "c2_staleness_histograms.png").stat().st_size > 10_000
