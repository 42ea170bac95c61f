"""The algorithms layer: each server algorithm as one policy object that holds no clock and no I/O
(`base.ServerPolicy`), driven alike by the SimPy timing engine and the real parameter server."""

from __future__ import annotations

from ..scenario.config import Scenario
from .asynchronous import AsyncPolicy, EASGDPolicy, KAsyncPolicy, KBatchAsyncPolicy, SSPPolicy
from .base import Apply, Cancel, Decision, Hold, Keep, Pull, Read, Serve, ServerPolicy, Stop
from .rounds import KBatchSyncPolicy, KSyncPolicy, LocalSGDPolicy, SyncPolicy

__all__ = ["POLICIES", "make_policy", "ServerPolicy", "Decision", "Apply", "Serve", "Read", "Hold", "Pull", "Keep",
           "Cancel", "Stop"]

POLICIES: dict[str, type[ServerPolicy]] = {policy.kind: policy for policy in (
    AsyncPolicy, SyncPolicy, KSyncPolicy, KAsyncPolicy, KBatchSyncPolicy, KBatchAsyncPolicy, SSPPolicy, LocalSGDPolicy,
    EASGDPolicy)}


def make_policy(scenario: Scenario) -> ServerPolicy:
    """A fresh policy object for the scenario's ``algorithm.kind`` (one per run)."""
    return POLICIES[scenario.algorithm.kind](scenario)
