"""The algorithms layer: each server algorithm as one policy object that holds no clock and no I/O
(`base.ServerPolicy`), driven alike by the SimPy timing engine and the real parameter server.

Built in: the classical algorithms (`asynchronous`, `rounds`) and the methods for heterogeneous
workers since 2022 (`modern`). A user's own policy is named ``algorithm.kind =
"package.module:ClassName"`` (a `ServerPolicy` subclass), with ``algorithm.options`` passed to its
constructor as keyword arguments.
"""

from __future__ import annotations

import inspect

from ..errors import ScenarioError
from ..scenario.config import Scenario
from ..scenario.plugins import load_object
from .asynchronous import AsyncPolicy, EASGDPolicy, KAsyncPolicy, KBatchAsyncPolicy, SSPPolicy
from .base import MODEL_UPDATES, Apply, Cancel, Decision, Hold, Keep, Pull, Read, Serve, ServerPolicy, Stop
from .modern import FedAsyncPolicy, FedBuffPolicy, RennalaPolicy, RingmasterPolicy
from .rounds import KBatchSyncPolicy, KSyncPolicy, LocalSGDPolicy, SyncPolicy

__all__ = ["POLICIES", "make_policy", "policy_class", "ServerPolicy", "Decision", "Apply", "Serve", "Read", "Hold", "Pull",
           "Keep", "Cancel", "Stop"]

POLICIES: dict[str, type[ServerPolicy]] = {policy.kind: policy for policy in (
    AsyncPolicy, SyncPolicy, KSyncPolicy, KAsyncPolicy, KBatchSyncPolicy, KBatchAsyncPolicy, SSPPolicy, LocalSGDPolicy,
    EASGDPolicy, RennalaPolicy, RingmasterPolicy, FedBuffPolicy, FedAsyncPolicy)}


def policy_class(kind: str) -> type[ServerPolicy]:
    """The class of ``algorithm.kind``: a built-in name, or a user's "package.module:ClassName"."""
    if kind in POLICIES:
        return POLICIES[kind]
    cls = load_object(kind, "algorithm.kind")
    if not (isinstance(cls, type) and issubclass(cls, ServerPolicy)):
        raise ScenarioError("algorithm.kind", f"= {kind!r}: names a {type(cls).__name__}, not a subclass of "
                            "asgd_sim.algorithms.ServerPolicy; write a class that subclasses it (examples/user_algorithm.py)")
    return cls


def make_policy(scenario: Scenario) -> ServerPolicy:
    """A fresh policy object for the scenario's algorithm (one per run), checked against the interface."""
    kind, options = scenario.algorithm.kind, dict(scenario.algorithm.options)
    cls = policy_class(kind)
    try:
        inspect.signature(cls).bind(scenario, **options)
    except TypeError as error:
        raise ScenarioError("algorithm.options", f"= {options}: {kind} does not take them ({error}); its constructor is "
                            f"{cls.__name__}{inspect.signature(cls).replace(return_annotation=inspect.Signature.empty)}") from None
    try:
        policy = cls(scenario, **options)
    except (TypeError, ValueError) as error:
        raise ScenarioError("algorithm.options", f"{kind}: {error}") from None
    _check_interface(kind, policy)
    return policy


def _check_interface(kind: str, policy: ServerPolicy) -> None:
    """What the engines rely on: positive integer widths and a known kind of model update."""
    for name in ("local_steps", "gradients_per_update"):
        value = getattr(policy, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScenarioError("algorithm.kind", f"= {kind!r}: its {name} is {value!r}; it must be an integer >= 1")
    if policy.model_update not in MODEL_UPDATES:
        raise ScenarioError("algorithm.kind", f"= {kind!r}: model_update = {policy.model_update!r}; choose one of "
                            f"{', '.join(MODEL_UPDATES)}")
