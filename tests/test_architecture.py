"""The package's shape: layers whose imports point down, a public namespace that cannot be shadowed,
short modules, and cited documents that exist (docs/DESIGN.md "Layers")."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "asgd_sim"

# The layers, bottom up (docs/DESIGN.md). A module may import its own layer's package and any lower
# layer; two packages on one layer (timing and numerics; studies and validation) never import each
# other. The package's __init__ is the facade: it sits above everything.
LAYERS: list[tuple[str, ...]] = [
    ("asgd_sim.errors",),
    ("asgd_sim.scenario",),
    ("asgd_sim.trace",),
    ("asgd_sim.algorithms",),
    ("asgd_sim.timing", "asgd_sim.numerics"),
    ("asgd_sim.results",),
    ("asgd_sim.backends",),
    ("asgd_sim.runner",),
    ("asgd_sim.studies", "asgd_sim.validation"),
    ("asgd_sim.cli",),
    ("asgd_sim.__main__",),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every asgd_sim module ``name`` imports, anywhere in the file (typing-only imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "asgd_sim")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] == "asgd_sim":
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
    known = modules()
    return {m for m in found if m in known and m != name}


def unit(module: str) -> tuple[int, str]:
    """(layer index, the package or module of the layer table that holds ``module``)."""
    for index, names in enumerate(LAYERS):
        for owner in names:
            if module == owner or module.startswith(owner + "."):
                return index, owner
    raise AssertionError(f"{module} is on no layer: add it to LAYERS and to docs/DESIGN.md")


def test_every_import_points_down_a_layer_or_stays_in_its_package() -> None:
    wrong = []
    for name, path in modules().items():
        if name == "asgd_sim":
            continue  # the facade
        layer, owner = unit(name)
        for target in imports_of(name, path):
            if target == "asgd_sim":
                wrong.append(f"{name} imports the facade asgd_sim")
                continue
            their_layer, their_owner = unit(target)
            if their_layer > layer or (their_layer == layer and their_owner != owner):
                wrong.append(f"{name} (layer {layer}) imports {target} (layer {their_layer})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_typing_imports_included() -> None:
    graph = {name: {t for t in imports_of(name, path) if not t.startswith(name + ".")} for name, path in modules().items()}
    # The facade and package __init__ files importing their children do not count.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # (The check above can fail: a scenario module importing the timing engine is caught.)
    fake = tmp_path / "asgd_sim" / "scenario"
    fake.mkdir(parents=True)
    path = fake / "bad.py"
    path.write_text("from ..timing.engine import TimingEngine\n")
    found = imports_of("asgd_sim.scenario.bad", path)
    assert "asgd_sim.timing.engine" in found
    assert unit("asgd_sim.timing.engine")[0] > unit("asgd_sim.scenario.bad")[0]


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"split these by responsibility: {long}"


def test_documents_the_code_cites_are_in_the_repository() -> None:
    cited = set()
    for path in modules().values():
        cited.update(re.findall(r"\b([A-Z]+\.md)\b", path.read_text()))
    missing = sorted(doc for doc in cited if not (ROOT / "docs" / doc).is_file() and not (ROOT / doc).is_file())
    assert cited and not missing, f"cited but not in docs/: {missing}"


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_simulate_is_the_function_whatever_was_imported_first() -> None:
    # Each case in a fresh interpreter: the names that used to be shadowed by modules.
    out = run_python("""
        import importlib, pkgutil, types
        from asgd_sim import simulate                       # a fresh interpreter, first thing
        import asgd_sim
        assert isinstance(simulate, types.FunctionType), simulate
        import asgd_sim.numerics.problems, asgd_sim.runner  # modules that import the public names' homes
        asgd_sim.replay, asgd_sim.Result, asgd_sim.load_run  # touching the lazy names
        for info in pkgutil.walk_packages(asgd_sim.__path__, "asgd_sim."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)           # every submodule of the package
        for name in ("simulate", "replay", "load_run", "load_sweep"):
            assert isinstance(getattr(asgd_sim, name), types.FunctionType), (name, getattr(asgd_sim, name))
        assert isinstance(asgd_sim.Result, type) and isinstance(asgd_sim.Scenario, type)
        assert asgd_sim.simulate is simulate
        print(sorted(dir(asgd_sim)))
    """)
    listed = eval(out.strip().splitlines()[-1])  # noqa: S307 - our own subprocess's repr of a list of str
    import asgd_sim

    assert set(asgd_sim.__all__) <= set(listed)
    assert "Any" not in listed and "annotations" not in listed


def test_simulate_called_twice_in_one_interpreter_stays_callable() -> None:
    run_python("""
        import asgd_sim
        sc = asgd_sim.scenario_from_dict({"run": {"until_updates": 4, "eval_every": 2}, "workers": [{"count": 2}],
                                          "model": {"name": "quadratic", "dim": 3}, "data": {"name": "none"}})
        first = asgd_sim.simulate(sc)
        import asgd_sim.numerics.problems
        second = asgd_sim.simulate(sc)
        assert first.summary["updates"] == second.summary["updates"] == 4
    """)


def test_importing_the_package_imports_neither_jax_nor_pandas() -> None:
    out = run_python("""
        import sys
        import asgd_sim
        asgd_sim.load_scenario("scenarios/quickstart.toml")   # its optimizer is the default: nothing to check with optax
        print(sorted(m for m in ("jax", "optax", "pandas", "matplotlib") if m in sys.modules))
    """)
    assert out.strip() == "[]"


@pytest.mark.parametrize("grid", ["optimizer.name=sgd,adamm", "optimizer.options={b1=0.9},{b7=1}"])
def test_a_sweep_with_a_bad_optimizer_anywhere_exits_2_before_any_run(tmp_path: Path, grid: str, capsys) -> None:
    from asgd_sim.cli import main

    scenario = tmp_path / "s.toml"
    scenario.write_text('[run]\nuntil_updates = 20\n[optimizer]\nname = "adam"\n')
    assert main(["sweep", str(scenario), "--timing-only", "--grid", grid, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: optimizer.")
    assert not (tmp_path / "sweep").exists()
