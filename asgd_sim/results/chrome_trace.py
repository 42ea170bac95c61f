"""Vectorised writing of Chrome Trace Event Format JSON (what ui.perfetto.dev and chrome://tracing read).

A timeline holds hundreds of thousands of events; formatting them one Python dict at a time cost
several times the simulation itself (issue 14). Here each kind of event is one row template over
numpy columns, formatted by Arrow compute kernels (`EventRows`): integers cast to text, times as
fixed-point microseconds from integer nanoseconds (`nanoseconds`, `Thousandths`), literal pieces
broadcast, and the joined rows' bytes written straight to the file.

Times are rounded to whole nanoseconds of simulated time once, and every slice's ``dur`` is the
difference of two rounded stamps, so slices that touch or nest in the trace touch or nest exactly
in the file (rounding is monotone).

`assign_lanes` keeps every track well formed: intervals of one track that would partially
overlap go to extra lanes (tracks of their own), so each track's slices nest or are disjoint, as
Perfetto needs to draw them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

__all__ = ["EventRows", "Thousandths", "thousandths", "nanoseconds", "assign_lanes", "joined_lists", "csr_positions"]

_CHUNK = 1 << 16  # rows formatted at once: bounds memory and keeps Arrow's 32-bit string offsets safe


def nanoseconds(seconds: np.ndarray) -> np.ndarray:
    """Simulated seconds as integer nanoseconds (the resolution of the timeline); NaN (never
    happened) as 0: callers mask those out with the float column."""
    seconds = np.asarray(seconds, dtype=np.float64)
    return np.rint(np.where(np.isfinite(seconds), seconds, 0.0) * 1e9).astype(np.int64)


def thousandths(values: np.ndarray) -> Thousandths:
    """Real ``values`` written with three decimals."""
    return Thousandths(np.rint(np.asarray(values, dtype=np.float64) * 1000).astype(np.int64))


@dataclass(frozen=True)
class Thousandths:
    """An integer column written divided by 1000 with three decimals: nanoseconds as microseconds
    (the format's unit of time), or a mean given in thousandths."""

    units: np.ndarray


def _text(values: np.ndarray) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(np.ascontiguousarray(values)), pa.string())


def _thousandths_text(units: np.ndarray) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    whole, frac = np.divmod(np.abs(units), 1000)
    text = pc.binary_join_element_wise(_text(whole), pc.utf8_lpad(_text(frac), 3, "0"), ".")
    negative = units < 0
    if negative.any():
        text = pc.if_else(pa.array(negative), pc.binary_join_element_wise("-", text, ""), text)
    return text


def joined_lists(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> Any:
    """For each of ``rows`` (sorted), its CSR slice of integer ``values`` written ``a,b,c`` (Arrow strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(rows) == 0:
        return pa.array([], pa.string())
    lo, hi = int(rows[0]), int(rows[-1]) + 1  # only the span of rows shown is converted
    base = int(offsets[lo])
    lists = pa.LargeListArray.from_arrays(pa.array(np.asarray(offsets[lo:hi + 1], np.int64) - base, pa.int64()),
                                          _text(values[base:int(offsets[hi])]))
    return pc.binary_join(lists.take(pa.array(np.asarray(rows) - lo)), ",")


def csr_positions(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, row index): every position in the CSR lists of ``rows`` and which of ``rows``
    (its index in ``rows``) it belongs to, in order."""
    counts = np.diff(offsets)[rows]
    row_index = np.repeat(np.arange(len(rows)), counts)
    first = np.repeat(offsets[rows] - (np.cumsum(counts) - counts), counts)
    return first + np.arange(int(counts.sum())), row_index


class EventRows:
    """Writes trace events into an open binary file, each row ending in ``,\\n``.

    `rows` takes the pieces of one row template: ``str`` pieces are literal JSON text, numpy
    integer arrays are written as decimals, `Thousandths` with three decimals, and Arrow string arrays
    (from `joined_lists` or ``pyarrow.compute``) as they are. `close` ends the event list with one
    last event (no trailing comma) and writes the file's other keys.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.count = 0
        handle.write(b'{"traceEvents":[\n')

    def rows(self, *pieces: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        columns = [p for p in pieces if not isinstance(p, str)]
        if not columns:
            raise ValueError("a row template needs at least one column")
        n = len(columns[0].units if isinstance(columns[0], Thousandths) else columns[0])
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            parts: list[Any] = []
            for p in pieces:
                if isinstance(p, str):
                    parts.append(p)
                elif isinstance(p, Thousandths):
                    parts.append(_thousandths_text(p.units[lo:hi]))
                elif isinstance(p, np.ndarray):
                    parts.append(_text(p[lo:hi]))
                else:  # an Arrow string array
                    parts.append(p.slice(lo, hi - lo))
            parts.append(",\n")
            joined = pc.binary_join_element_wise(*parts, "")
            if not isinstance(joined, pa.Array):
                joined = joined.combine_chunks()
            # The rows' text is one contiguous buffer: write the bytes between the first and last offsets.
            width = 8 if pa.types.is_large_string(joined.type) else 4
            offsets = np.frombuffer(joined.buffers()[1], np.int64 if width == 8 else np.int32, count=len(joined) + 1,
                                    offset=width * joined.offset)
            self.handle.write(memoryview(joined.buffers()[2])[int(offsets[0]):int(offsets[-1])])
        self.count += n

    def event(self, event: dict[str, Any]) -> None:
        """One event written from a dict (metadata: process and thread names)."""
        self.handle.write(json.dumps(event, separators=(",", ":")).encode() + b",\n")
        self.count += 1

    def close(self, last: dict[str, Any], **other: Any) -> None:
        self.handle.write(json.dumps(last, separators=(",", ":")).encode())
        self.count += 1
        tail = "".join(f",{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}" for key, value in other.items())
        self.handle.write(f"\n]{tail}}}\n".encode())


def assign_lanes(track: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A lane per interval such that intervals of one ``track`` and one lane never partially overlap.

    Most tracks need one lane; those are found in one vectorised pass (sorted by start, an interval
    overlaps an earlier one of its track only if some interval overlaps its predecessor). Only the
    tracks that have overlaps are laid out greedily (first lane free at the interval's start), in
    time order, so a lane is filled before the next one opens.
    """
    n = len(track)
    lanes = np.zeros(n, np.int64)
    if n < 2:
        return lanes
    order = np.lexsort((-end, start, track))
    t, s, e = track[order], start[order], end[order]
    same = t[1:] == t[:-1]
    clash = same & (s[1:] < e[:-1])
    if not clash.any():
        return lanes
    crowded = np.unique(t[1:][clash])
    pick = np.isin(t, crowded)
    idx = np.flatnonzero(pick)
    out = np.zeros(len(idx), np.int64)
    free: list[int] = []
    current = None
    for j, (tr, a, b) in enumerate(zip(t[idx].tolist(), s[idx].tolist(), e[idx].tolist())):
        if tr != current:
            current, free = tr, []
        for lane, busy_until in enumerate(free):
            if busy_until <= a:
                free[lane] = b
                out[j] = lane
                break
        else:
            out[j] = len(free)
            free.append(b)
    lanes[order[idx]] = out
    return lanes
