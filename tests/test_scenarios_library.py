"""The scenario library: every file states its question, loads, runs (shortened), and its sweep command is valid.

Each scenario's header comment is its documentation: the question, how to run it ("# Run:",
with --timing-only for timing questions), the sweep that answers it ("# Sweep:") and what to look
at. Here every scenario runs with a short override (the full sizes run in under 60 s each on 2
CPU cores; that is measured by hand, not timed in tests), and every documented sweep command is
parsed and planned (all its points validated) without running it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from asgd_sim.cli import _parser
from asgd_sim.runner import run_timing
from asgd_sim.scenario.files import load_scenario
from asgd_sim.studies.sweep import plan_sweep

ROOT = Path(__file__).parent.parent
# The library, then the papers' experiments (scenarios/papers/: each reproduces a published figure).
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml")) + sorted((ROOT / "scenarios" / "papers").glob("*.toml"))
SHORT = ["run.until_updates=60", "run.eval_every=30"]
TOPICS = {"quickstart", "straggler", "heterogeneous", "lock_contention", "bandwidth", "ssp", "staleness_mitigation",
          "label_skew", "failures", "rack_slowdown", "pipeline", "transformer"}


def header(path: Path) -> list[str]:
    """The leading comment lines, without '# '."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def documented_commands(path: Path, verb: str) -> list[list[str]]:
    """The ``asgd-sim <verb> ...`` commands of a header, continuation lines joined."""
    text = "\n".join(header(path))
    commands = []
    for start in [i for i in range(len(text)) if text.startswith(f"asgd-sim {verb} ", i)]:
        end, parts = start, []
        while True:
            stop = text.find("\n", end)
            line = text[end:] if stop < 0 else text[end:stop]
            if not line.rstrip().endswith("\\"):
                parts.append(line.split("  ")[0] if verb == "run" else line)
                break
            parts.append(line.rstrip()[:-1])
            end = stop + 1
        commands.append(shlex.split(" ".join(parts).replace("...", ""))[1:])
    return commands


def is_timing_question(path: Path) -> bool:
    return any(line.startswith("Run:") and "--timing-only" in line for line in header(path))


def test_library_covers_the_topics() -> None:
    names = {p.stem for p in SCENARIOS if p.parent.name == "scenarios"}
    assert len(names) >= 12 and TOPICS <= names, TOPICS - names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_header_states_question_and_what_to_look_at(path: Path) -> None:
    text = "\n".join(header(path))
    assert len(header(path)) >= 4, "a header comment: the question, how to run it, what to look at"
    assert "Question:" in text or path.stem == "quickstart"
    assert "Look at:" in text
    for args in documented_commands(path, "sweep"):
        parsed = _parser().parse_args(args)
        assert Path(parsed.scenario) == path.relative_to(ROOT)
        sweep = plan_sweep(ROOT / parsed.scenario, parsed.grid, parsed.variant, seeds=parsed.seeds,
                           overrides=parsed.overrides, timing_only=parsed.timing_only)
        assert len(sweep.points) >= 2 and parsed.out is not None


@pytest.mark.slow
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_runs_shortened(path: Path) -> None:
    scenario = load_scenario(path, SHORT)
    if is_timing_question(path):
        summary = run_timing(scenario).summary
        assert summary["updates"] == 60 and summary["stopped"] == "until_updates"
        return
    from asgd_sim.runner import simulate

    result = simulate(scenario)
    summary = result.summary
    assert summary["stopped"] in ("until_updates", "target_accuracy"), summary["stopped"]
    assert not result.diverged and summary["updates"] > 0 and summary["gradients"] > 0
    assert np.isfinite(result.metrics["train_loss"]).all()
