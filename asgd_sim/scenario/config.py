"""The typed scenario tree: every key and its default, in code (docs/STYLE.md 4).

A scenario file holds only what differs from these defaults. Building a config has no side
effects; `asgd_sim.scenario` parses, validates and resolves files into these frozen objects, and
writes them back (every default filled in) beside the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .distributions import Constant, Distribution

__all__ = [
    "RunConfig",
    "Slowdown",
    "Failures",
    "Pipeline",
    "WorkerGroup",
    "Rack",
    "Device",
    "NetworkConfig",
    "ServerConfig",
    "AlgorithmConfig",
    "ModelConfig",
    "DataConfig",
    "OptimizerConfig",
    "Scenario",
    "ALGORITHMS",
    "LOCKS",
    "METRICS",
    "STALENESS_RULES",
]

ALGORITHMS = ("async", "sync", "k_sync", "k_async", "k_batch_sync", "k_batch_async", "ssp", "local_sgd", "easgd",
              "rennala", "ringmaster", "fedbuff", "fedasync")
LOCKS = ("none", "shard", "global", "rw")
STALENESS_RULES = ("none", "inverse", "poly", "adaptive", "koloskova")
# What one evaluation measures (the columns of metrics.csv besides update, time and staleness):
# the train loss, the test accuracy, |grad f|^2 of the measured objective, and f(x) - f* where the
# optimum is known. A problem that cannot compute one reports NaN.
METRICS = ("train_loss", "test_accuracy", "grad_norm_sq", "suboptimality")


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    until_updates: int | None = 5000  # stop after this many (logical) server updates ...
    until_time: float | None = None  # ... or this much simulated time, whichever comes first
    eval_every: int = 100  # updates between evaluations (numerics)
    target_accuracy: float | None = None  # stop when test accuracy reaches this (numerics)
    max_loss: float = 1e6  # a train loss above this (or NaN/Inf) ends the run as diverged
    window: int = 256  # updates the numerics engine consumes per streaming window
    batch_cap: int = 64  # most gradients computed in one vmapped call


@dataclass(frozen=True)
class Slowdown:
    """Compute runs ``factor`` times slower during [start, end) of simulated time."""

    start: float
    end: float
    factor: float


@dataclass(frozen=True)
class Failures:
    """Crashes at fixed times (``at``) or at exponential times (``mtbf``); restart after a delay.

    ``restart_after`` (fixed) or ``mttr`` (exponential mean) gives the down time; with neither, a
    failed worker stays down. Work in progress at a crash is lost (its gradient is cancelled).
    """

    at: tuple[float, ...] = ()
    mtbf: float | None = None
    restart_after: float | None = None
    mttr: float | None = None


@dataclass(frozen=True)
class Pipeline:
    """A model-parallel worker: a GPipe-style pipeline of ``stages`` over ``microbatches``.

    The sampled compute time is the whole mini-batch's work on one device; it is split evenly
    over stages (or by ``stage_weights``) and micro-batches, and each stage boundary moves
    ``activation_bytes`` per micro-batch forward and the same backward over the worker's link.
    """

    stages: int = 1
    microbatches: int = 1
    activation_bytes: float = 0.0
    stage_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class WorkerGroup:
    name: str = "worker"
    count: int = 4
    compute: Distribution = field(default_factory=lambda: Constant(0.05))  # seconds per gradient
    stagger: float = 0.0  # worker j of the group starts at j * stagger seconds
    slowdowns: tuple[Slowdown, ...] = ()
    failures: Failures = field(default_factory=Failures)
    rack: str | None = None
    pipeline: Pipeline | None = None
    device: str | None = None  # the [[devices]] entry its computations share (None: a device of its own)


@dataclass(frozen=True)
class Rack:
    """Workers sharing a rack share its slowdowns (a hot aisle, a noisy neighbour, a bad switch)."""

    name: str
    slowdowns: tuple[Slowdown, ...] = ()


@dataclass(frozen=True)
class Device:
    """Workers on one device share it: ``capacity`` computations run at full speed at once (cores, or
    concurrent kernels); more share it fairly (processor sharing), so each stretches with the load.
    A worker's compute time is then its work: seconds at full speed."""

    name: str
    capacity: float = 1.0


@dataclass(frozen=True)
class NetworkConfig:
    latency: Distribution = field(default_factory=lambda: Constant(0.001))  # one-way, per message
    bandwidth: float = 1.25e9  # bytes/s of each worker's link (inf: no transfer time)
    server_bandwidth: float = 1.25e9  # bytes/s of the server NIC per direction, shared fairly
    compression: float = 1.0  # message size multiplier (0.25: 4x compression)


@dataclass(frozen=True)
class ServerConfig:
    shards: int = 1
    lock: str = "shard"  # none | shard | global | rw
    apply_time: Distribution = field(default_factory=lambda: Constant(0.0005))  # per update per shard
    # A lock handed to a waiting update starts this much later: a real server's waiter wakes, takes
    # the GIL, and the last holder's bookkeeping runs first. 0 in an idealised server.
    lock_handoff: Distribution = field(default_factory=lambda: Constant(0.0))
    # The chance that a released lock goes to the request that has waited longest; otherwise to one
    # of the other waiters, uniformly. 1: first come, first served. A real server's threading.Lock
    # is not FIFO (a woken waiter races the others for the GIL): `calibrate` measures this.
    lock_fifo: float = 1.0
    atomic: bool = False  # an update holds all its shards' locks at once ...
    lock_order: str = "sorted"  # ... taken in "sorted" or "random" order (random can deadlock)
    checkpoint_every: int | None = None  # real backends: checkpoint the server every N updates (--resume)


@dataclass(frozen=True)
class AlgorithmConfig:
    kind: str = "async"  # a built-in name (ALGORITHMS) or a user policy "package.module:ClassName"
    k: int = 4  # for the k_* kinds (Dutta et al. 2018), rennala and fedbuff
    backup: int = 0  # sync only: take the first (workers - backup) gradients (Chen et al. 2016)
    staleness_bound: int = 3  # ssp
    drop_staleness_above: int | None = None  # discard gradients staler than this
    local_steps: int = 1  # local_sgd / easgd / fedbuff / fedasync
    local_learning_rate: float | None = None  # their local steps' rate (default: optimizer.learning_rate)
    elastic_alpha: float = 0.1  # easgd moving rate (Zhang et al. 2015)
    delay_threshold: int | None = None  # ringmaster's R: apply only gradients of delay < R (default: the workers)
    stops: bool = False  # ringmaster: stop a computation once its delay reaches R (Algorithm 5)
    mixing: float = 0.6  # fedasync's alpha: x <- (1 - a) x + a x_worker, a = alpha * s(staleness)
    mixing_decay: str = "constant"  # fedasync's s: constant | polynomial ((1 + tau)^-a) | hinge
    mixing_a: float = 0.5  # fedasync: the polynomial's exponent, or the hinge's slope
    mixing_b: int = 4  # fedasync: the hinge's knee (s = 1 up to this staleness)
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a user policy


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # quadratic | worst_case_quadratic | least_squares | logreg | mlp | cnn | transformer | "pkg.mod:factory"
    param_bytes: float | None = None  # timing-only message size; derived from the model otherwise
    hidden: tuple[int, ...] = (256, 256)  # mlp
    dim: int = 10  # quadratic / worst_case_quadratic / least_squares
    eigenvalues: Any = field(default_factory=lambda: {"min": 0.1, "max": 1.0})  # quadratic spectrum
    noise: float = 0.0  # quadratics: std of the Gaussian noise added to each gradient coordinate
    noise_mode: str | None = None  # quadratics: "independent" per coordinate, or "shared" (one scalar on all)
    smoothness: float = 1.0  # worst_case_quadratic: L
    channels: tuple[int, ...] = (8, 16)  # cnn
    layers: int = 2  # transformer
    width: int = 64
    heads: int = 4
    context: int = 32
    options: dict[str, Any] = field(default_factory=dict)  # passed to a user factory


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | mnist1d | synthetic | text (quadratic / least_squares need none)
    batch_size: int = 32
    partition: str = "iid"  # iid | dirichlet | classes | shared (every worker samples the whole training set)
    alpha: float = 0.5  # dirichlet concentration (smaller: more label skew)
    classes_per_worker: int = 2  # partition = "classes": each worker holds this many classes
    test_fraction: float = 0.25
    samples: int = 2000  # synthetic / least_squares
    difficulty: float = 1.0  # synthetic: class overlap
    factory: str | None = None  # "pkg.module:factory" for a user model's data


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # any optax optimizer, or "pkg.module:factory" returning one
    learning_rate: float = 0.05
    schedule: str | None = None  # optional optax schedule name (e.g. cosine_decay_schedule)
    schedule_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # other optax keyword arguments
    staleness_rule: str = "none"  # none | inverse | poly | adaptive | koloskova | "pkg.module:function"
    staleness_power: float = 0.5  # poly: step / (1 + tau)^power
    smoothness: float | None = None  # koloskova: L, the objective's smoothness constant
    dc_lambda: float = 0.0  # DC-ASGD compensation (Zheng et al. 2017)
    dc_adaptive: bool = False


@dataclass(frozen=True)
class Scenario:
    """A whole scenario: cluster, algorithm and learning problem."""

    name: str = "scenario"
    run: RunConfig = field(default_factory=RunConfig)
    workers: tuple[WorkerGroup, ...] = field(default_factory=lambda: (WorkerGroup(),))
    racks: tuple[Rack, ...] = ()
    devices: tuple[Device, ...] = ()
    network: NetworkConfig = field(default_factory=NetworkConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    @property
    def num_workers(self) -> int:
        return sum(group.count for group in self.workers)

    def message_bytes(self, param_bytes: float) -> float:
        """Bytes one shard's message carries (a gradient push or a parameter pull)."""
        return param_bytes * self.network.compression / self.server.shards

    @property
    def has_transfer_time(self) -> bool:
        return not (math.isinf(self.network.bandwidth) and math.isinf(self.network.server_bandwidth))
