"""The optimizer keys of a scenario, checked when it is loaded and turned into an optax optimizer.

``optimizer.name`` names any optax optimizer (its other keyword arguments in ``options``) or a user
factory ``"pkg.module:factory"`` called as ``factory(learning_rate=..., **options)`` that returns an
``optax.GradientTransformation``; ``schedule`` names an optax learning-rate schedule
(``schedule_options``); ``staleness_rule`` may name a user function ``rule(staleness, workers)``. Whether such a name exists,
takes a learning rate and accepts those options is known only to optax, so a scenario whose
optimizer section asks for anything beyond the default (plain SGD) imports optax to check it when
it is loaded: a sweep with a misspelled optimizer anywhere in its grid fails at planning, not after
its runs. Nothing here builds a model; optax (and JAX under it) is imported only inside these
functions, so importing the scenario layer never imports JAX.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ScenarioError, closest
from .config import OptimizerConfig
from .plugins import is_object_path, load_object

__all__ = ["check_optimizer", "make_optimizer", "unknown_choice"]


def check_optimizer(opt: OptimizerConfig) -> None:
    """Raise a ScenarioError if optax cannot build ``opt`` as a server's optimizer.

    The default (plain SGD, no options, no schedule) needs no check, so timing-only scenarios
    that leave the optimizer alone never import JAX.
    """
    if is_object_path(opt.staleness_rule):
        _check_user_rule(opt.staleness_rule)
    if opt.name == "sgd" and not opt.options and opt.schedule is None and not opt.schedule_options:
        return
    key = _frozen((opt.name, opt.learning_rate, opt.schedule, opt.schedule_options, opt.options))
    if key not in _CHECKED:  # a sweep's points mostly share their optimizer: check each one once
        make_optimizer(opt)
        _CHECKED.add(key)


def _check_user_rule(path: str) -> None:
    """A user staleness rule ``function(staleness, num_workers)`` must give one finite factor >= 0
    per staleness (probed at staleness 0..7 with 4 workers)."""
    import jax.numpy as jnp
    import numpy as np

    function = load_object(path, "optimizer.staleness_rule")
    tau = jnp.arange(8, dtype=jnp.float32)
    try:
        out = np.asarray(function(tau, 4), np.float64)
    except Exception as error:  # noqa: BLE001 - any failure of the user's function
        raise ScenarioError("optimizer.staleness_rule", f"{path}(staleness, num_workers) failed on staleness 0..7 with 4 workers: "
                            f"{type(error).__name__}: {error}") from None
    if out.shape != (8,) or not np.all(np.isfinite(out) & (out >= 0)):
        raise ScenarioError("optimizer.staleness_rule", f"{path}(staleness, num_workers) must return one finite factor >= 0 per "
                            f"staleness (the same shape); on staleness 0..7 it gave {np.round(out, 4).tolist()!r:.80}")


_CHECKED: set[Any] = set()


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def make_optimizer(opt: OptimizerConfig) -> Any:
    """``getattr(optax, opt.name)(learning_rate=..., **opt.options)``, the rate possibly an optax
    schedule ``getattr(optax, opt.schedule)(init_value=opt.learning_rate, **opt.schedule_options)``:
    an ``optax.GradientTransformation``, or a ScenarioError naming the key and the fix."""
    import jax.numpy as jnp
    import optax

    if not opt.learning_rate > 0:
        raise ScenarioError("optimizer.learning_rate", f"= {opt.learning_rate}: must be > 0")
    learning_rate: Any = opt.learning_rate
    if opt.schedule is not None:
        learning_rate = _call_optax(opt.schedule, "schedule", "init_value", opt.learning_rate, opt.schedule_options)
    if is_object_path(opt.name):
        tx = _call_user_factory(opt.name, learning_rate, opt.options)
    else:
        tx = _call_optax(opt.name, "name", "learning_rate", learning_rate, opt.options)
    source = opt.name if is_object_path(opt.name) else f"optax.{opt.name}"
    if not isinstance(tx, optax.GradientTransformation):
        raise ScenarioError("optimizer.name", f"{source} returned a {type(tx).__name__}, not an optax GradientTransformation")
    try:  # a one-coordinate probe: optimizers whose update needs more than (g, state, params) fail here
        probe = jnp.zeros(1, jnp.float32)
        tx.update(probe, tx.init(probe), probe)
    except Exception as error:  # noqa: BLE001 - any failure means the server cannot drive it
        raise ScenarioError("optimizer.name", f"{source} cannot run as a server rule, whose update passes only (gradient, state, params): {type(error).__name__}: {error}") from None
    return tx


def _call_user_factory(path: str, learning_rate: Any, options: dict[str, Any]) -> Any:
    """The user's ``factory(learning_rate=..., **optimizer.options)``."""
    factory = load_object(path, "optimizer.name")
    try:
        inspect.signature(factory).bind(learning_rate=learning_rate, **options)
    except TypeError as error:
        raise ScenarioError("optimizer.options", f"= {dict(options)}: {path} does not accept learning_rate and these ({error})") from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    try:
        return factory(learning_rate=learning_rate, **options)
    except Exception as error:  # noqa: BLE001 - any failure of the user's factory
        raise ScenarioError("optimizer.name", f"{path}(learning_rate=..., **options) failed: {type(error).__name__}: {error}") from None


def _call_optax(name: str, key: str, first: str, value: Any, options: dict[str, Any]) -> Any:
    """Call optax.<name>(<first>=value, **options); errors name optimizer.<key>[_options]."""
    import optax

    kind = "optimizer" if key == "name" else "schedule"
    options_path = "optimizer.options" if key == "name" else "optimizer.schedule_options"
    fn = getattr(optax, name, None) if not name.startswith("_") else None
    takes_first = callable(fn) and first in _parameters(fn)
    if not takes_first:
        choices = [n for n in dir(optax) if n[:1].islower() and callable(getattr(optax, n)) and first in _parameters(getattr(optax, n))]
        why = f"optax.{name} takes no {first}, so it is no {kind}" if callable(fn) else f"{name!r} is not an optax {kind}"
        raise unknown_choice(f"optimizer.{key}", why, name, choices)
    if first in options:
        source = "the rate comes from optimizer.learning_rate" if key == "name" else "the schedule starts at optimizer.learning_rate"
        raise ScenarioError(f"{options_path}.{first}", f"{source}: remove it")
    parameters = _parameters(fn)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for option in options:
            if option not in parameters:
                hint = closest(option, parameters)
                raise ScenarioError(
                    f"{options_path}.{option}",
                    f"optax.{name} has no option {option!r}" + (f": did you mean {hint!r}?" if hint else "")
                    + f" (its options: {', '.join(p for p in parameters if p != first)})",
                )
    try:
        inspect.signature(fn).bind(**{first: value}, **options)
    except TypeError as error:
        raise ScenarioError(options_path, f"optax.{name}: {error}") from None
    try:
        return fn(**{first: value}, **options)
    except (TypeError, ValueError) as error:
        raise ScenarioError(options_path, f"optax.{name} rejected {dict(options)}: {error}") from None


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def unknown_choice(path: str, message: str, name: str, choices: Any) -> ScenarioError:
    """A ScenarioError for an unknown name, with the closest choice and a list of choices."""
    hint = closest(name, choices)
    listing = ", ".join(sorted(choices)[:16]) + (", ..." if len(choices) > 16 else "")
    return ScenarioError(path, message + (f": did you mean {hint!r}?" if hint else "") + f" (choices: {listing})")
