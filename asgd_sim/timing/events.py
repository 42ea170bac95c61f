"""The engine's own SimPy events: a timeout that fires at an exact absolute time with a chosen tie
priority, and the value a stopped worker is resumed with."""

from __future__ import annotations

from heapq import heappush

import simpy
from simpy.events import Timeout as _SimPyTimeout

__all__ = ["Timeout", "RESTARTED"]

RESTARTED = object()  # what a stopped worker's process receives when the server serves it anew


class Timeout(_SimPyTimeout):
    """A timeout whose ties at equal time are broken by ``priority`` (the worker id).

    ``at`` fires it at exactly that absolute time: ``now + (at - now)`` can miss ``at`` by one
    ulp, and a time precomputed for the trace (a compute end, an arrival) must equal the clock
    when the event happens, or the trace's times fall out of order (t_arrive < t_compute_end).
    """

    def __init__(self, env: simpy.Environment, delay: float, priority: int, at: float | None = None) -> None:
        self.env = env
        self.callbacks = []
        self._value = None
        self._delay = delay
        self._ok = True
        if at is None:
            env.schedule(self, priority, delay)  # type: ignore[arg-type]
        else:  # what Environment.schedule does, with the absolute time given
            heappush(env._queue, (at, priority, next(env._eid), self))  # type: ignore[attr-defined]
