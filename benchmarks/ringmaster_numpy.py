"""The Ringmaster paper's Section G as a researcher writes it by hand: a numpy event loop.

The honest baseline for `scenarios/papers/ringmaster_quadratic.toml` (docs/THEORY.md C16): n
workers, worker j taking 1 + sqrt(j) + |N(0, j + 1)| seconds per gradient (drawn afresh), each
worker's next finish time in one array, the next event found with ``argmin``, restarts done with
masks, gradients of Nesterov's worst-case quadratic in numpy (float32, like the simulator), the
parameters a computation started from kept by version (a ring of the last R versions for
Ringmaster, a copy per worker for asynchronous SGD, whose delays reach thousands). It records
|grad f|^2 every ``record_every`` updates. No trace, no plots: the least a researcher would write.

    .venv/bin/python benchmarks/ringmaster_numpy.py [--workers 6174] [--horizon 2000] [--method ringmaster]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

__all__ = ["run", "METHODS"]

METHODS = {  # the paper's parameters (Section G)
    "ringmaster": {"threshold": 6, "step": 0.25},
    "rennala": {"batch": 6, "step": 1.0},
    "asgd": {"step": 0.00032},  # delay-adaptive: step * n / max(n, delay)
}


class Quadratic:
    """f(x) = x'Ax/2 - b'x, A = (1/4) tridiag(-1, 2, -1), b = -(1/4) e1; gradient + noise * z * 1."""

    def __init__(self, d: int, noise: float) -> None:
        self.d, self.noise = d, np.float32(noise)
        self.x0 = np.zeros(d, np.float32)
        self.x0[0] = math.sqrt(d)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        ax = np.float32(0.5) * x
        ax[1:] -= np.float32(0.25) * x[:-1]
        ax[:-1] -= np.float32(0.25) * x[1:]
        ax[0] += np.float32(0.25)
        return ax

    def stochastic(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.gradient(x) + self.noise * np.float32(rng.standard_normal())


def run(method: str, workers: int, d: int = 1729, horizon: float = 2000.0, seed: int = 0, noise: float = 0.01,
        record_every: int = 50) -> dict:
    """One method's run; its updates, wall time and (time, |grad f|^2) every ``record_every`` updates."""
    rng = np.random.default_rng(seed)
    problem = Quadratic(d, noise)
    j = np.arange(workers)
    shift, scale = 1.0 + np.sqrt(j), np.sqrt(j + 1.0)

    def draw(idx: np.ndarray) -> np.ndarray:
        return shift[idx] + scale[idx] * np.abs(rng.standard_normal(len(idx)))

    params = METHODS[method]
    x = problem.x0.copy()
    curve = [(0.0, float(np.sum(problem.gradient(x) ** 2)))]
    started = time.perf_counter()
    everyone = np.arange(workers)
    finish = draw(everyone)
    k, now = 0, 0.0
    if method == "rennala":
        batch, step = params["batch"], np.float32(params["step"])
        while True:
            total = np.zeros(d, np.float32)
            for _ in range(batch):  # the first `batch` gradients at this point, from whoever delivers
                w = int(np.argmin(finish))
                now = float(finish[w])
                if now > horizon:
                    break
                total += problem.stochastic(x, rng)
                finish[w] = now + draw(np.array([w]))[0]
            if now > horizon:
                break
            x = x - step * total / np.float32(batch)
            k += 1
            finish = now + draw(everyone)  # every worker restarts at the new point
            if k % record_every == 0:
                curve.append((now, float(np.sum(problem.gradient(x) ** 2))))
    elif method == "ringmaster":
        R, step = params["threshold"], np.float32(params["step"])
        ring = np.zeros((R + 1, d), np.float32)  # the versions a computation in progress may have started from
        ring[0] = x
        start = np.zeros(workers, np.int64)
        while True:
            w = int(np.argmin(finish))
            now = float(finish[w])
            if now > horizon:
                break
            x = x - step * problem.stochastic(ring[start[w] % (R + 1)], rng)  # delay k - start[w] < R: applied
            k += 1
            ring[k % (R + 1)] = x
            start[w], finish[w] = k, now + draw(np.array([w]))[0]
            stopped = np.flatnonzero(start <= k - R)  # computations that have seen R updates: restart here
            if stopped.size:
                start[stopped], finish[stopped] = k, now + draw(stopped)
            if k % record_every == 0:
                curve.append((now, float(np.sum(problem.gradient(x) ** 2))))
    else:  # delay-adaptive asynchronous SGD (Mishchenko et al. 2022)
        step = params["step"]
        starts = np.repeat(x[None, :], workers, axis=0)  # the point each computation started from
        start = np.zeros(workers, np.int64)
        while True:
            w = int(np.argmin(finish))
            now = float(finish[w])
            if now > horizon:
                break
            delay = k - start[w]
            x = x - np.float32(step * workers / max(workers, delay)) * problem.stochastic(starts[w], rng)
            k += 1
            starts[w], start[w], finish[w] = x, k, now + draw(np.array([w]))[0]
            if k % record_every == 0:
                curve.append((now, float(np.sum(problem.gradient(x) ** 2))))
    return {"method": method, "workers": workers, "updates": k, "wall_s": time.perf_counter() - started,
            "final_grad_norm_sq": curve[-1][1], "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=6174)
    parser.add_argument("--horizon", type=float, default=2000.0)
    parser.add_argument("--method", choices=sorted(METHODS), action="append")
    args = parser.parse_args()
    out = [run(m, args.workers, horizon=args.horizon) for m in (args.method or sorted(METHODS))]
    print(json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in out], indent=2))


if __name__ == "__main__":
    main()
