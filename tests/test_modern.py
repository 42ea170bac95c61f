"""The methods for heterogeneous workers (issue 13), their closed forms, and what a user plugs in.

Each closed form is tested against an independent computation (brute force, dense linear algebra,
a plain numpy fold of the trace); each policy against what its paper says a run must show.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import EXP1, ROOT, ideal_scenario

import asgd_sim
from asgd_sim.cli import main
from asgd_sim.errors import ScenarioError
from asgd_sim.trace import APPLIED, DROPPED
from asgd_sim.validation import theory_modern as modern

SQRT = {"dist": "constant", "value": "sqrt(i + 1)"}  # tau_i = sqrt(i), i = 1..n


def sqrt_workers(n: int) -> dict:
    return {"workers": [{"count": n, "compute": SQRT}]}


# --- closed forms against brute force -----------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 7, 30, 101])
def test_rennala_round_time_is_the_kth_completion(k: int) -> None:
    taus = [0.7, 1.3, 1.3, 2.9, 5.0]
    completions = sorted(j * t for t in taus for j in range(1, k + 1))  # enough multiples of each
    assert modern.rennala_round_time(taus, k) == pytest.approx(completions[k - 1], abs=1e-12)
    t = modern.rennala_round_time(taus, k)  # the smallest t with sum floor(t / tau_i) >= k
    assert sum(math.floor(t / tau + 1e-12) for tau in taus) >= k > sum(math.floor((t - 1e-9) / tau) for tau in taus)
    assert modern.rennala_round_bound(taus, k) >= t


def test_optimal_workers_minimise_the_profile() -> None:
    taus = modern.sqrt_times(50)
    for ratio in (0.0, 1.0, 6.0, 100.0):
        profile = [(m + ratio) / sum(1.0 / taus[i] for i in range(m)) for m in range(1, 51)]
        assert modern.optimal_workers(taus, ratio) == int(np.argmin(profile)) + 1
        assert modern.optimal_time(taus, ratio) == pytest.approx(min(profile))
    assert modern.optimal_workers(taus, 1e9) == 50  # a noisy problem wants every worker


@pytest.mark.parametrize("d", [1, 2, 7, 60])
def test_worst_case_quadratic_constants_match_dense_algebra(d: int) -> None:
    L, noise = 2.0, 0.3
    A = (L / 4) * (2 * np.eye(d) - np.eye(d, k=1) - np.eye(d, k=-1))
    b = np.zeros(d)
    b[0] = -L / 4
    x0 = np.zeros(d)
    x0[0] = math.sqrt(d)
    f = lambda x: 0.5 * x @ A @ x - b @ x  # noqa: E731
    f_star = f(np.linalg.solve(A, b))
    got = modern.worst_case_quadratic_constants(d, L, noise)
    assert got["f_star"] == pytest.approx(f_star, rel=1e-9, abs=1e-12)
    assert got["delta"] == pytest.approx(f(x0) - f_star, rel=1e-9)
    assert got["grad_norm_sq_0"] == pytest.approx(np.sum((A @ x0 - b) ** 2), rel=1e-9)
    assert got["sigma2"] == pytest.approx(noise**2 * d)


def test_the_papers_constants_for_d_1729() -> None:
    # docs/THEORY.md C16 / the Ringmaster paper's Section G: Delta = 442.77, |grad f(x0)|^2 = 550.8.
    got = modern.worst_case_quadratic_constants(1729, 1.0, 0.01)
    assert round(got["delta"], 2) == 442.77 and round(got["grad_norm_sq_0"], 1) == 550.8
    assert got["sigma2"] == pytest.approx(0.1729) and got["f_star"] == pytest.approx(-1729 / (8 * 1730))


# --- the worst-case quadratic as a problem --------------------------------------------------------------


def test_worst_case_quadratic_problem_has_the_exact_gradient_and_metrics() -> None:
    import jax

    from asgd_sim.numerics.problems import build_problem

    d, L = 12, 1.5
    sc = ideal_scenario("wcq", model={"name": "worst_case_quadratic", "dim": d, "smoothness": L, "noise": 0.0}, data={"name": "none"})
    problem = build_problem(sc, 4)
    x0 = np.asarray(problem.init(jax.random.PRNGKey(0)))
    A = (L / 4) * (2 * np.eye(d) - np.eye(d, k=1) - np.eye(d, k=-1))
    b = np.zeros(d)
    b[0] = -L / 4
    x = x0 + np.linspace(-1, 1, d)
    grad = np.asarray(jax.grad(problem.loss)(x.astype(np.float32), problem.make_batch(0, 0)))
    assert np.allclose(grad, A @ x - b, atol=1e-5)
    metrics = {k: float(v) for k, v in problem.evaluate(x0).items()}
    constants = modern.worst_case_quadratic_constants(d, L)
    assert metrics["suboptimality"] == pytest.approx(constants["delta"], rel=1e-5)
    assert metrics["grad_norm_sq"] == pytest.approx(constants["grad_norm_sq_0"], rel=1e-5)
    assert math.isnan(metrics["test_accuracy"])


@pytest.mark.parametrize("mode, shared", [("shared", True), ("independent", False)])
def test_worst_case_quadratic_noise_modes(mode: str, shared: bool) -> None:
    from asgd_sim.numerics.problems import build_problem

    sc = ideal_scenario("wcq", model={"name": "worst_case_quadratic", "dim": 20, "noise": 0.5, "noise_mode": mode},
                        data={"name": "none"})
    problem = build_problem(sc, 2)
    noise = np.stack([np.asarray(problem.make_batch(w, k)) for w in range(2) for k in range(200)])
    assert np.all(np.ptp(noise, axis=1) == 0) == shared  # one scalar on every coordinate, or not
    assert noise.var() == pytest.approx(0.25, rel=0.15)  # noise^2 per coordinate either way


# --- policies: what their papers say a run must show -----------------------------------------------------


def test_rennala_is_the_k_batch_sync_schedule() -> None:
    base = {"workers": [{"count": 6, "compute": EXP1}], "run": {"until_updates": 300}}
    rennala = asgd_sim.simulate_timing(ideal_scenario("r", base, algorithm={"kind": "rennala", "k": 5})).trace
    k_batch = asgd_sim.simulate_timing(ideal_scenario("r", base, algorithm={"kind": "k_batch_sync", "k": 5})).trace
    assert rennala.equals(k_batch)
    assert np.all(np.diff(rennala.member_offsets) == 5) and np.all(rennala.staleness[rennala.fate == APPLIED] == 0)


def test_rennala_round_time_matches_the_formula_in_the_engine() -> None:
    n, k = 13, 17
    tr = asgd_sim.simulate_timing(ideal_scenario("r", sqrt_workers(n), algorithm={"kind": "rennala", "k": k},
                                                 run={"until_updates": 40})).trace
    durations = np.diff(np.concatenate([[0.0], tr.u_applied]))
    assert np.allclose(durations, modern.rennala_round_time(np.sqrt(np.arange(1, n + 1)), k), atol=1e-9)


@pytest.mark.parametrize("R", [1, 3, 8])
def test_ringmaster_drops_exactly_the_gradients_of_delay_at_least_r(R: int) -> None:
    tr = asgd_sim.simulate_timing(ideal_scenario("rm", {"workers": [{"count": 10, "compute": EXP1}]},
                                                 algorithm={"kind": "ringmaster", "delay_threshold": R},
                                                 run={"until_updates": 2000})).trace
    settled = (tr.fate == APPLIED) | (tr.fate == DROPPED)
    assert np.array_equal(tr.fate[settled] == DROPPED, tr.staleness[settled] >= R)
    assert (tr.fate == DROPPED).any() or R >= 8


def test_ringmaster_with_stops_never_applies_a_delay_of_r_and_drops_nothing() -> None:
    R = 3
    tr = asgd_sim.simulate_timing(ideal_scenario("rm", {"workers": [{"count": 12, "compute": EXP1}]},
                                                 algorithm={"kind": "ringmaster", "delay_threshold": R, "stops": True},
                                                 run={"until_updates": 2000})).trace
    assert tr.staleness[tr.fate == APPLIED].max() == R - 1
    assert not (tr.fate == DROPPED).any() and (tr.fate == 2).any()  # stops cancel, nothing is dropped
    # A stopped computation is cut where it was stopped: the update that made its delay R.
    cancelled = np.flatnonzero(tr.fate == 2)
    for g in cancelled[:50]:
        stop = tr.t_compute_end[g]
        if np.isnan(stop):
            continue
        applied_by_then = np.sum(tr.u_applied <= stop + 1e-12)
        assert applied_by_then - tr.read_version[g, 0] == R


def test_fedbuff_weights_each_push_by_its_staleness_at_the_flush() -> None:
    k, H = 3, 2
    sc = ideal_scenario("fb", {"workers": [{"count": 6, "compute": EXP1}]},
                        algorithm={"kind": "fedbuff", "k": k, "local_steps": H}, run={"until_updates": 200})
    tr = asgd_sim.simulate_timing(sc).trace
    for r in range(tr.num_update_rows):
        gids, weights = tr.members(r)
        assert len(gids) == k * H
        heads = gids[tr.local_step[gids] == 0]
        flush = tr.u_version[r] - 1  # the version when the buffer was flushed (no lock waits here)
        expected = 1.0 / np.sqrt(1.0 + flush - tr.read_version[heads, 0]) / k
        assert np.allclose(np.sort(weights[tr.local_step[gids] == 0]), np.sort(expected))
        assert np.allclose(weights.reshape(-1, H)[:, 0], weights.reshape(-1, H)[:, 1])  # a push's rows share a weight


def quadratic_run(kind: str, algorithm: dict, updates: int = 60):
    eig = [0.5, 1.0, 2.0]
    sc = ideal_scenario(kind, {"workers": [{"count": 4, "compute": EXP1}]},
                        model={"name": "quadratic", "dim": 3, "eigenvalues": eig, "noise": 0.1}, data={"name": "none"},
                        algorithm={"kind": kind, **algorithm}, run={"until_updates": updates, "eval_every": updates},
                        optimizer={"name": "sgd", "learning_rate": 0.2})
    return sc, asgd_sim.simulate(sc), np.asarray(eig)


def local_runs(sc, trace, eig, x_of_version):
    """Each push's final model after its local SGD steps, folded in numpy (noise as the problem draws it)."""
    from asgd_sim.numerics.problems import build_problem

    problem = build_problem(sc, sc.num_workers)
    lr = sc.optimizer.learning_rate if sc.algorithm.local_learning_rate is None else sc.algorithm.local_learning_rate

    def run(head: int) -> np.ndarray:
        x = x_of_version[int(trace.read_version[head, 0])].copy()
        w = int(trace.worker[head])
        for step in range(sc.algorithm.local_steps):
            xi = np.asarray(problem.make_batch(w, int(trace.k[head]) + step), np.float64)
            x = x - lr * (eig * x + xi)  # grad of (x'diag(eig)x/2 + xi.x)
        return x

    return run


def test_fedasync_mixes_by_the_staleness_function() -> None:
    sc, result, eig = quadratic_run("fedasync", {"local_steps": 2, "mixing": 0.7, "mixing_decay": "hinge",
                                                 "mixing_a": 2.0, "mixing_b": 1})
    tr = result.trace
    x_of_version = {0: np.ones(3)}
    run = local_runs(sc, tr, eig, x_of_version)
    x = np.ones(3)
    for r in range(tr.num_update_rows):
        gids, _ = tr.members(r)
        head = int(gids[tr.local_step[gids] == 0][0])
        tau = tr.u_version[r] - 1 - tr.read_version[head, 0]
        s = 1.0 if tau <= 1 else 1.0 / (2.0 * (tau - 1) + 1.0)  # hinge, a = 2, b = 1
        x = (1 - 0.7 * s) * x + 0.7 * s * run(head)
        x_of_version[int(tr.u_version[r])] = x.copy()
    assert np.allclose(np.asarray(result.params), x, atol=1e-5)


def test_fedbuff_applies_the_weighted_model_changes_through_the_server_rule() -> None:
    sc, result, eig = quadratic_run("fedbuff", {"k": 2, "local_steps": 3, "local_learning_rate": 0.1})
    tr = result.trace
    x_of_version = {0: np.ones(3)}
    run = local_runs(sc, tr, eig, x_of_version)
    x = np.ones(3)
    for r in range(tr.num_update_rows):
        gids, weights = tr.members(r)
        heads = gids[tr.local_step[gids] == 0]
        change = sum(w * (x_of_version[int(tr.read_version[h, 0])] - run(h)) for h, w in zip(heads, weights[tr.local_step[gids] == 0]))
        x = x - 0.2 * change  # the server's SGD at rate 0.2 on the weighted model changes (FedBuff's eta_g)
        x_of_version[int(tr.u_version[r])] = x.copy()
    assert np.allclose(np.asarray(result.params), x, atol=1e-5)


# --- delay-adaptive rules, user rules and optimizers by path ---------------------------------------------


def test_koloskova_factor_is_eta_until_the_workers_then_one_over_4_l_tau() -> None:
    from asgd_sim.numerics.rules import staleness_factor

    tau = np.array([0, 3, 4, 5, 50, 400], np.float32)
    got = np.asarray(staleness_factor("koloskova", tau, 4, learning_rate=0.1, smoothness=2.0))
    want = [1.0 if t <= 4 else min(1.0, 1.0 / (4 * 2.0 * t * 0.1)) for t in tau]
    assert np.allclose(got, want)
    assert np.asarray(staleness_factor("adaptive", tau, 4)) == pytest.approx([1, 1, 1, 0.8, 0.08, 0.01])  # gamma n / max(n, tau)


PLUGINS = textwrap.dedent('''
    import jax.numpy as jnp
    import optax

    def halve(staleness, workers):
        return 0.5 * jnp.ones_like(staleness)

    def sgd_twice(learning_rate, scale=2.0):
        return optax.sgd(learning_rate * scale)

    def broken_rule(staleness, workers):
        return staleness[:2]
''')


def test_user_staleness_rule_and_optimizer_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = {"workers": [{"count": 2, "compute": EXP1}], "run": {"until_updates": 30, "eval_every": 30},
            "model": {"name": "quadratic", "dim": 2, "eigenvalues": [1.0, 1.0]}, "data": {"name": "none"}}
    plain = asgd_sim.simulate(ideal_scenario("p", base, optimizer={"name": "sgd", "learning_rate": 0.1}))
    # halving every step and doubling the optimizer's rate is the same run
    same = asgd_sim.simulate(ideal_scenario("p", base, optimizer={"name": "my_plugins:sgd_twice", "learning_rate": 0.1,
                                                                  "staleness_rule": "my_plugins:halve"}))
    assert np.allclose(np.asarray(plain.params), np.asarray(same.params), atol=1e-6)
    with pytest.raises(ScenarioError, match="one finite factor >= 0 per staleness"):
        ideal_scenario("p", base, optimizer={"staleness_rule": "my_plugins:broken_rule"})
    with pytest.raises(ScenarioError, match=r"optimizer.options = \{'nope': 1\}: my_plugins:sgd_twice does not accept"):
        ideal_scenario("p", base, optimizer={"name": "my_plugins:sgd_twice", "options": {"nope": 1}})


# --- per-worker formulas ------------------------------------------------------------------------------------


def test_formulas_give_each_worker_its_parameters() -> None:
    sc = asgd_sim.scenario_from_dict({"workers": [{"count": 5, "compute": {"dist": "half_normal", "shift": "1 + sqrt(i)",
                                                                          "scale": "sqrt(i + 1)"}}]})
    compute = sc.workers[0].compute
    for i in range(5):
        assert compute.for_worker(i).shift == pytest.approx(1 + math.sqrt(i))
        assert compute.for_worker(i).scale == pytest.approx(math.sqrt(i + 1))
    draws = compute.for_worker(3).sample(np.random.default_rng(0), 200_000)
    assert draws.min() >= 1 + math.sqrt(3) and draws.mean() == pytest.approx(1 + math.sqrt(3) + 2 * math.sqrt(2 / math.pi), rel=0.01)
    assert asgd_sim.scenario_from_dict(asgd_sim.scenario.scenario_to_dict(sc)) == sc


def test_formulas_drive_the_engine_per_worker() -> None:
    tr = asgd_sim.simulate_timing(ideal_scenario("f", sqrt_workers(6), run={"until_updates": 300})).trace
    durations = tr.t_compute_end - tr.t_compute_start
    for w in range(6):
        mine = durations[(tr.worker == w) & np.isfinite(durations)]
        assert np.allclose(mine, math.sqrt(w + 1))


def test_thousands_of_one_worker_groups_load_and_run() -> None:
    n = 6174
    groups = [{"name": f"w{j}", "count": 1, "compute": {"dist": "half_normal", "shift": 1 + math.sqrt(j), "scale": math.sqrt(j + 1)}}
              for j in range(n)]
    sc = ideal_scenario("many", {"workers": groups}, run={"until_updates": 20_000})
    formula = ideal_scenario("one", {"workers": [{"count": n, "compute": {"dist": "half_normal", "shift": "1 + sqrt(i)",
                                                                            "scale": "sqrt(i + 1)"}}]}, run={"until_updates": 20_000})
    # The same cluster written both ways draws the same compute times (a stream per worker id).
    assert asgd_sim.simulate_timing(sc).trace.equals(asgd_sim.simulate_timing(formula).trace)


# --- bad input: one line, exit status 2 ------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("algorithm.kind=asynch", "algorithm.kind = 'asynch': unknown algorithm"),
    ("algorithm.kind=ringmaster", None),
    ("algorithm.delay_threshold=0", "algorithm.delay_threshold = 0: must be an integer >= 1"),
    ("algorithm.stops=true", "algorithm.stops = true: calculation stops belong to kind = 'ringmaster'"),
    ("workers[0].compute={dist='half_normal', shift='1 + sqrt(j)', scale=1}", "workers[0].compute.shift = '1 + sqrt(j)': unknown name 'j'"),
    ("workers[0].compute={dist='half_normal', shift='__import__(\"os\")', scale=1}", "is not an allowed function call"),
    ("algorithm.kind=examples.user_algorithm:NoSuchClass", "algorithm.kind: 'examples.user_algorithm' has no attribute 'NoSuchClass'"),
    ("algorithm.kind=asgd_sim.errors:closest", "not a subclass of asgd_sim.algorithms.ServerPolicy"),
    ("optimizer.staleness_rule=koloskova", "optimizer.smoothness: missing"),
    ("model.noise_mode=both", "model.noise_mode = 'both': unknown noise mode"),
])
def test_bad_input_for_every_new_key_is_one_line_and_exit_2(override: str, message: str | None, tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # (examples.user_algorithm is importable from the repository root)
    code = main(["run", "scenarios/quickstart.toml", "--timing-only", "--quiet", "--set", "run.until_updates=20",
                 "--set", override, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # (a valid setting, for contrast)
        assert code == 0 and not err
        return
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_user_algorithm_example_runs_simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    sc = ideal_scenario("gc", {"workers": [{"count": 8, "compute": EXP1}]}, server={"apply_time": 0.05},
                        algorithm={"kind": "examples.user_algorithm:GroupCommitSGD", "options": {"max_batch": 3}},
                        run={"until_updates": 400})
    tr = asgd_sim.simulate_timing(sc).trace
    sizes = np.diff(tr.member_offsets)
    assert sizes.max() == 3 and (sizes > 1).any() and (sizes == 1).any()  # groups form under contention, capped
    assert np.all(tr.fate[tr.member_gid] == APPLIED)
    # An update's lock is requested only once the previous one has landed: one leader at a time.
    assert np.all(tr.u_request[1:] >= tr.u_applied[:-1] - 1e-12)
