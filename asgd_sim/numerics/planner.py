"""Host-side planning of the numerics engine: which update rows form each wave, which history
slots they read and write, and the padded tables one device call takes.

`WavePlanner` is owned by `numerics.engine.NumericsEngine`: it keeps the cursor into the trace
(``row``, the next update row to dispatch), the shard versions the dispatched rows reach, the
history slot map (`history.SlotMap`) and the gradient cache's map (`gradcache.GradientCache`), and
returns plans; the engine owns the device arrays and runs the plans. Everything here is numpy on
the host; the device sees only the tables `call_inputs` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..trace import CANCELLED, TraceBuilder
from .gradcache import GradientCache
from .history import SlotMap

__all__ = ["WavePlanner", "CallPlan", "PooledPlan", "bucket", "column"]

CPU_WAVE_ROWS = 4  # update rows per wave on a CPU backend (see `WavePlanner.__init__`)
WAVES_PER_CALL = 64  # waves one device call may run
POOLED_ROWS_PER_CALL = 32  # shared-read rows one device call may run (see `WavePlanner.plan_pooled`)
HISTORY_BUDGET_BYTES = 512 * 2**20  # initial history budget; it may still grow beyond


def bucket(n: int) -> int:
    """The power of two >= n: few distinct shapes, so few compilations."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def column(column: Any, dtype: Any) -> np.ndarray:
    # A temporary zero-copy view of an array.array column. Callers index it at once (a copy), so
    # no view outlives the statement: array.array refuses to grow while a view exists.
    return np.frombuffer(column, dtype=dtype)


def _ends_call(now: int, before: int, eval_every: int, limit: float) -> bool:
    """Whether reaching ``now`` logical updates (from ``before``) is an evaluation point or the limit."""
    return now > before and (now % eval_every == 0 or now >= limit)


def _gids_from(tr: TraceBuilder, row: int) -> np.ndarray:
    """The gradients that the update rows from ``row`` on combine."""
    return column(tr.u_gid, np.int64)[int(column(tr.u_offsets, np.int64)[row]):]


@dataclass
class CallPlan:
    """One device call: waves of update rows ``[start, start + bounds[-1])`` split at ``bounds``,
    the shard versions they reach, and the padded tables of `NumericsEngine._waves_impl`."""

    start: int
    bounds: np.ndarray
    versions: np.ndarray
    inputs: tuple[np.ndarray | None, ...]

    @property
    def end(self) -> int:
        return self.start + int(self.bounds[-1])

    @property
    def waves(self) -> int:
        return len(self.bounds) - 1


@dataclass
class PooledPlan:
    """One device call of shared-read rows ``[start, start + rows)`` (`WavePlanner.plan_pooled`):
    per row (history slot written, staleness 0, worker of its first member), per member (worker, k)
    and weight, padded to ``POOLED_ROWS_PER_CALL`` rows of ``members_max`` members."""

    start: int
    rows: int
    row_ints: np.ndarray
    member_ints: np.ndarray
    weights: np.ndarray
    computed: int

    @property
    def end(self) -> int:
        return self.start + self.rows


class WavePlanner:
    """The planning half of the numerics engine (see the module docstring).

    ``members_max``: the most gradients one update combines (the policy's width); ``cap``: the
    most gradients computed in one vmapped call (``run.batch_cap``); ``chunk``: floats per shard
    row (for the history's memory budget); ``on_cpu``: the wave shape suited to a CPU backend.
    ``cached``: whether gradients wait in a device cache for their other shards' rows.
    """

    def __init__(self, workers: int, shards: int, members_max: int, cap: int, chunk: int, *, on_cpu: bool,
                 cached: bool) -> None:
        self.M, self.S, self.members_max, self.chunk = workers, shards, members_max, chunk
        # One wave shape per run, so one compilation: about sqrt(pi M / 2) updates are ready at
        # once in async SGD with M workers (the birthday-problem length of a run of stale reads),
        # times S shard rows each; longer waves are split, shorter ones padded.
        ready = math.sqrt(math.pi * workers / 2)
        natural = shards * math.ceil(ready) if members_max == 1 else 1
        if on_cpu:
            # On a CPU a vmapped block of more than ~8 gradients costs more per gradient (the
            # stacked weights fall out of cache: measured 0.12 ms/gradient at 4 and 8, 0.15 at 16,
            # 0.16 alone for the digits MLP), and padding rows cost as much as real ones, so waves
            # stay short and rarely padded there: the largest power of two <= the mean run of
            # ready updates (M = 8: 2 rows; waves of 4 were 28 % padding). Accelerators take
            # the natural length.
            rounded_down = 1 << max(0, int(ready).bit_length() - 1)
            natural = min(natural, shards * min(CPU_WAVE_ROWS, rounded_down))
        # At most `cap` gradients per vmapped call: the largest power of 2 <= cap / members.
        self.max_rows = min(bucket(natural), 1 << max(0, (max(1, cap) // members_max).bit_length() - 1))
        # The scan over a wave's rows has at least 2 steps: XLA turns a one-step scan into
        # straight-line code that copies the whole donated history instead of updating it in place
        # (measured ~50x slower). Padding rows are no-ops.
        self.rows_per_wave = max(2, self.max_rows)
        # Waves per device call: a call runs its waves in a loop on the device, so the host pays
        # one dispatch per call, not per wave; the member table of a call stays below ~1 MB.
        width = self.rows_per_wave * members_max
        self.waves_per_call = max(1, min(WAVES_PER_CALL, 65536 // width))
        self.slots = SlotMap(shards, self._initial_capacity())
        self.slots.store_each(np.zeros(shards, np.int64))  # version 0 of every shard, in slot 0
        self.cache = GradientCache(self._cache_capacity()) if cached else None
        self.versions = np.zeros(shards, np.int64)  # planned (dispatched) version of each shard
        self.row = 0  # next update row of the trace to dispatch
        self.seen = 0  # gradients of the trace already registered as live
        self.live = np.zeros(0, np.int64)  # gradients that may still appear in an update row
        self.pooling = False  # whether shared-read rows go to `plan_pooled` (set by the engine)

    @property
    def scratch(self) -> int:
        """The history row padding rows write: past the slots, so no version lives there."""
        return self.slots.capacity

    def logical_updates(self) -> int:
        return int(self.versions.min())

    def pending_rows(self, tr: TraceBuilder) -> int:
        return tr.num_update_rows - self.row

    def _initial_capacity(self) -> int:
        """History slots to start with: the versions in-flight gradients read (about one per
        worker) plus each shard's newest, twice over so that collections are rare, within
        HISTORY_BUDGET_BYTES; the history grows when a run needs more."""
        return self._slots_within(2 * (self.M + 1) + 4 * self.rows_per_wave, HISTORY_BUDGET_BYTES, 4 * self.rows_per_wave)

    def _cache_capacity(self) -> int:
        """Gradients that may wait for their other shards: about one push per worker."""
        return self._slots_within(2 * self.M + 4 * self.max_rows, HISTORY_BUDGET_BYTES // 2, 2 * self.max_rows)

    def _slots_within(self, wanted: int, budget_bytes: int, floor: int) -> int:
        """Slots of one parameter vector each: ``wanted`` rounded up to a power of two, cut to the
        largest power of two that fits ``budget_bytes``, and at least ``floor``."""
        fits = budget_bytes // (4 * self.S * self.chunk)
        return max(min(bucket(wanted), bucket(fits + 1) // 2), floor)

    def _unsettled(self, tr: TraceBuilder, gids: np.ndarray) -> np.ndarray:
        """Per gradient: whether a row not yet in the trace may still use it (its push is not
        settled on every shard, and it was not cancelled)."""
        return (column(tr.resolved, np.int32)[gids] < self.S) & (column(tr.fate, np.int8)[gids] != CANCELLED)

    def _register(self, tr: TraceBuilder) -> None:
        """Track new gradients; forget those settled on every shard (all their rows are in the
        trace, so `_collect` finds them there) or cancelled."""
        n = tr.num_gradients
        if n > self.seen:
            self.live = np.concatenate([self.live, np.arange(self.seen, n)])
            self.seen = n
        if self.live.size:
            self.live = self.live[self._unsettled(tr, self.live)]

    def _collect(self, tr: TraceBuilder, row: int, versions: np.ndarray) -> None:
        """Free the history slots of every version no gradient can read any more.

        Kept: each shard's newest version (``versions``; future pulls read it) and the versions
        read by gradients that may still join an update row (`_register`) or that update rows
        from ``row`` on use. Rows before ``row`` are planned: a wave reads its versions before any
        later wave writes, so their slots may be reused.
        """
        self._register(tr)
        gids = np.concatenate([self.live, _gids_from(tr, row)])
        reads = column(tr.read_version, np.int64).reshape(-1, self.S)[gids]
        self.slots.collect([np.append(reads[:, s], versions[s]) for s in range(self.S)])

    def make_room(self, tr: TraceBuilder, rows: int) -> int:
        """At least ``rows`` free history slots per shard, collecting first and growing the
        history (doubling: one recompilation) only when live versions fill most of it. Returns
        the slots the device history must grow by (0: none)."""
        if self.slots.free_slots() >= rows:
            return 0
        self._collect(tr, self.row, self.versions)
        if self.slots.free_slots() < max(rows, self.slots.capacity // 4):
            extra = self.slots.capacity
            while self.slots.free_slots() + extra < max(rows, (self.slots.capacity + extra) // 4):
                extra *= 2
            self.slots.grow(self.slots.capacity + extra)
            return extra
        return 0

    def plan_call(self, tr: TraceBuilder, eval_every: int, limit: float) -> CallPlan:
        """The next device call: waves from the pending rows, their slots and padded tables.

        A wave is a run of update rows whose gradients read only versions that exist at its
        start; the call ends at an evaluation point, at ``limit`` logical updates, after
        ``waves_per_call`` waves, or when the history needs to grow. The rows count as
        dispatched (``row`` and ``versions`` move past them).
        """
        if self.cache is not None:
            self._forget_settled(tr)
        start = self.row
        bounds, read_slots, write_slots, versions = self._plan(tr, eval_every, limit)
        plan = CallPlan(start, bounds, versions, self._call_inputs(tr, start, bounds, read_slots, write_slots))
        self.row, self.versions = plan.end, versions
        return plan

    def rows_to_cut(self, tr: TraceBuilder, start: int, stop: int, eval_every: int, limit: float) -> int:
        """How many rows from ``start`` (at most to ``stop``) until an evaluation point or the limit."""
        versions, logical = self.versions.copy(), self.logical_updates()
        for i, shard in enumerate(column(tr.u_shard, np.int32)[start:stop]):
            versions[shard] += 1
            if _ends_call(int(versions.min()), logical, eval_every, limit):
                return i + 1
        return stop - start

    def _plan(self, tr: TraceBuilder, eval_every: int, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Greedy waves over the pending rows, with the history slots each reads and writes.

        Returns the wave boundaries (row offsets from ``self.row``), the read slots of every
        member ``[members, S]``, the write slot of every row, and the shard versions after the call.
        """
        S, R, start = self.S, self.max_rows, self.row
        stop = min(tr.num_update_rows, start + self.waves_per_call * R)
        offsets = column(tr.u_offsets, np.int64)[start:stop + 1]
        first = int(offsets[0])
        gids = column(tr.u_gid, np.int64)[first:offsets[-1]]
        reads = column(tr.read_version, np.int64).reshape(-1, S)[gids]
        shard = column(tr.u_shard, np.int32)[start:stop]
        new_version = column(tr.u_version, np.int64)[start:stop]
        need = np.maximum.reduceat(reads, offsets[:-1] - first, axis=0)  # newest version each row reads
        need_one = need[:, 0].tolist() if S == 1 else None
        versions, logical = self.versions.copy(), self.logical_updates()
        read_slots = np.zeros((len(gids), S), np.int32)
        write_slots = np.zeros(stop - start, np.int32)

        def settle(w0: int, r: int) -> None:
            """The slots of the waves of rows [w0, r): the versions they write, then those they read
            (in one step for many waves: a wave reads only versions that exist at its start,
            written before or by an earlier wave, and a new version takes a free slot, never one
            a version still to be read holds; so the slots are those of wave after wave)."""
            for s in range(S):
                mine = np.flatnonzero(shard[w0:r] == s) + w0 if S > 1 else np.arange(w0, r)
                write_slots[mine] = self.slots.store(s, new_version[mine])
            m0, m1 = offsets[w0] - first, offsets[r] - first
            read_slots[m0:m1] = self.slots.lookup(reads[m0:m1])

        free = self.slots.free_slots()
        bounds, r, n, cut, settled = [0], 0, stop - start, False, 0
        if self.pooling:  # shared-read rows are `plan_pooled`'s, whichever call they fall in
            shared = np.flatnonzero(self.shared_reads(tr, start, stop))
            n = int(shared[0]) if shared.size else n
        while r < n and len(bounds) <= self.waves_per_call and not cut:
            if free < R:
                settle(settled, r)
                settled = r
                self._collect(tr, start + r, versions)
                free = self.slots.free_slots()
                if free < R:
                    break  # the next call grows the history
            w0 = r
            if S == 1:  # the common case, on plain ints
                base = now = int(versions[0])
                while r < n and r - w0 < R and need_one[r] <= base:
                    r, now = r + 1, now + 1
                    if _ends_call(now, logical, eval_every, limit):
                        cut = True
                        break
                versions[0] = now
                free -= r - w0
            else:
                base = versions.copy()
                while r < n and r - w0 < R and (need[r] <= base).all():
                    versions[shard[r]] += 1
                    r += 1
                    if _ends_call(int(versions.min()), logical, eval_every, limit):
                        cut = True
                        break
                pending = np.bincount(shard[settled:r], minlength=S).tolist()
                free = min(len(f) - c for f, c in zip(self.slots.free, pending))
            if r == w0:
                raise RuntimeError("a gradient read a version that is not applied yet: the trace is inconsistent")
            bounds.append(r)
        settle(settled, r)
        return np.array(bounds), read_slots, write_slots, versions

    # ---- rows whose gradients all read the parameters just before them -------------------------

    def shared_reads(self, tr: TraceBuilder, start: int, stop: int) -> np.ndarray:
        """Per row in ``[start, stop)`` (one shard): whether every gradient it combines read the
        version just before it. Such a row (a round of synchronous SGD, K-sync, K-batch-sync,
        Rennala) is the gradient of one loss, the weighted sum of its members' mini-batch losses,
        at the server's current parameters: one backward pass over their batches together."""
        offsets = column(tr.u_offsets, np.int64)[start:stop + 1]
        if len(offsets) < 2:
            return np.zeros(0, bool)
        first = int(offsets[0])
        reads = column(tr.read_version, np.int64)[column(tr.u_gid, np.int64)[first:offsets[-1]]]
        before = column(tr.u_version, np.int64)[start:stop] - 1
        at = offsets[:-1] - first
        return (np.minimum.reduceat(reads, at) == before) & (np.maximum.reduceat(reads, at) == before)

    def plan_pooled(self, tr: TraceBuilder, eval_every: int, limit: float) -> PooledPlan | None:
        """The next call if the next row is a shared-read row (`shared_reads`): the run of such
        rows from it, cut at an evaluation point, at ``limit`` logical updates, at
        ``POOLED_ROWS_PER_CALL`` rows or at the free history slots (each row stores its version,
        which a later row's gradients may read). None if the next row is not one."""
        start = self.row
        stop = min(tr.num_update_rows, start + min(POOLED_ROWS_PER_CALL, self.slots.free_slots()))
        shared = self.shared_reads(tr, start, stop)
        if not shared.size or not shared[0]:
            return None
        rows = int(np.argmin(shared)) if not shared.all() else len(shared)
        before, logical = int(self.versions[0]), self.logical_updates()
        for i in range(rows):
            if _ends_call(before + i + 1, logical, eval_every, limit):
                rows = i + 1
                break
        versions = column(tr.u_version, np.int64)[start:start + rows]
        offsets = column(tr.u_offsets, np.int64)[start:start + rows + 1]
        first = int(offsets[0])
        gids = column(tr.u_gid, np.int64)[first:offsets[-1]]
        count = np.diff(offsets)
        m_row = np.repeat(np.arange(rows), count)
        m_pos = np.arange(len(gids)) - np.repeat(offsets[:-1] - first, count)
        worker = column(tr.worker, np.int32)[gids]
        R, K = POOLED_ROWS_PER_CALL, self.members_max
        row_ints = np.zeros((R, 3), np.int32)
        row_ints[:rows, 0] = self.slots.store(0, versions)
        # (row_ints[:, 1], the rows' staleness, stays 0: each member read the version just before.)
        row_ints[:rows, 2] = worker[offsets[:-1] - first]
        member_ints = np.zeros((R, K, 2), np.int32)
        member_ints[m_row, m_pos] = np.stack([worker, column(tr.k, np.int64)[gids]], axis=1)
        weights = np.zeros((R, K), np.float32)
        weights[m_row, m_pos] = column(tr.u_weight, np.float64)[first:offsets[-1]]
        self.row, self.versions = start + rows, np.array([before + rows], np.int64)
        return PooledPlan(start, rows, row_ints, member_ints, weights, len(gids))

    def _call_inputs(self, tr: TraceBuilder, start: int, bounds: np.ndarray, read_slots: np.ndarray,
                     write_slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """The padded arrays of `_waves_impl` for the planned waves (see its docstring)."""
        S, W, rows = self.S, self.waves_per_call, int(bounds[-1])
        offsets = column(tr.u_offsets, np.int64)[start:start + rows + 1]
        first = int(offsets[0])
        m_gid = column(tr.u_gid, np.int64)[first:offsets[-1]]
        count = np.diff(offsets)
        row_wave = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
        row_pos = np.arange(rows) - bounds[row_wave]
        m_row = np.repeat(np.arange(rows), count)
        m_pos = np.arange(len(m_gid)) - np.repeat(offsets[:-1] - first, count)
        m_wave = row_wave[m_row]
        if S == 1:  # a gradient is used by one update row only, and computed in its wave
            u_member, u_wave, u_gid = np.arange(len(m_gid)), m_wave, m_gid
            u_index = m_index = u_member - (offsets[bounds[:-1]] - first)[m_wave]
            G = self.max_rows if self.members_max == 1 else bucket(int(u_index.max()) + 1)
            computed = np.ones(len(u_member), bool)
            cache_ints = store_ints = None
        else:  # once per wave for all its shard rows, and only if it is not waiting in the cache
            _, u_member, inverse = np.unique(m_wave * tr.num_gradients + m_gid, return_index=True, return_inverse=True)
            u_wave, u_gid = m_wave[u_member], m_gid[u_member]
            cached, u_index, slot = self.cache.plan(u_wave, u_gid, self._used_after(tr, start + rows, m_wave, m_gid, u_gid))
            computed = ~cached
            G = bucket(int(u_index[computed].max()) + 1) if computed.any() else 1
            C = bucket(int(u_index[cached].max()) + 1) if cached.any() else 1
            cache_ints = np.full((W, C), self.cache.scratch, np.int32)
            cache_ints[u_wave[cached], u_index[cached]] = slot[cached]
            store_ints = np.full((W, G), self.cache.scratch, np.int32)
            store_ints[u_wave[computed], u_index[computed]] = slot[computed]
            m_index = np.where(cached, G + u_index, u_index)[inverse.reshape(-1)]
        worker = column(tr.worker, np.int32)
        cw, ci, cg = u_wave[computed], u_index[computed], u_gid[computed]
        grad_ints = np.zeros((W, G, S + 3), np.int32)
        grad_ints[cw, ci, :S] = read_slots[u_member[computed]]
        grad_ints[cw, ci, S] = worker[cg]
        grad_ints[cw, ci, S + 1] = column(tr.k, np.int64)[cg]
        grad_ints[cw, ci, S + 2] = 1
        shard = column(tr.u_shard, np.int32)[start:start + rows]
        row_ints = np.zeros((W, self.rows_per_wave, 3), np.int32)
        row_ints[:, :, 1] = self.scratch
        row_ints[row_wave, row_pos] = np.stack([shard, write_slots[:rows], np.ones(rows, np.int32)], axis=1)
        m_shard = shard[m_row]
        m_read = column(tr.read_version, np.int64).reshape(-1, S)[m_gid, m_shard]
        version = column(tr.u_version, np.int64)[start:start + rows]
        member_ints = np.zeros((W, self.rows_per_wave, self.members_max, 4), np.int32)
        member_ints[m_wave, row_pos[m_row], m_pos] = np.stack(
            [m_index, version[m_row] - 1 - m_read, worker[m_gid], read_slots[np.arange(len(m_gid)), m_shard]], axis=1)
        weights = np.zeros((W, self.rows_per_wave, self.members_max), np.float32)
        weights[m_wave, row_pos[m_row], m_pos] = column(tr.u_weight, np.float64)[first:offsets[-1]]
        return grad_ints, row_ints, member_ints, weights, cache_ints, store_ints

    def _used_after(self, tr: TraceBuilder, end: int, m_wave: np.ndarray, m_gid: np.ndarray,
                    u_gid: np.ndarray) -> Callable[[int, int], bool]:
        """Whether gradient g (one of ``u_gid``) may be used by a row after wave w of the call
        being planned: a later wave of it, a row of the trace after it (from row ``end``), or a
        row not in the trace yet."""
        order = np.lexsort((m_wave, m_gid))
        last_wave = dict(zip(m_gid[order].tolist(), m_wave[order].tolist()))  # (the last write wins: the latest wave)
        later = set(_gids_from(tr, end).tolist()) | set(u_gid[self._unsettled(tr, u_gid)].tolist())
        return lambda gid, wave: last_wave[gid] > wave or gid in later

    def _forget_settled(self, tr: TraceBuilder) -> None:
        """Free the cached gradients that no row can use any more (settled on every shard, e.g.
        dropped by the shards whose rows were still to come)."""
        held = self.cache.held()
        if held.size:
            self.cache.forget(held[~self._unsettled(tr, held) & ~np.isin(held, _gids_from(tr, self.row))])
