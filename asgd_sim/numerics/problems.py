"""Learning problems: what a gradient is a gradient of, and which data it sees.

`build_problem` turns a scenario's ``[model]`` and ``[data]`` into a `Problem` (see
`numerics.sampling`, which also explains how mini-batches are drawn): a theory problem with a
known optimum (`theory_problems`: quadratic, least squares, Nesterov's worst-case quadratic), a
network on a data set (`networks`: logistic regression, MLP, CNN, transformer), or a user model
"package.module:factory".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ScenarioError, closest
from ..scenario.config import ModelConfig, Scenario
from ..scenario.plugins import load_object
from .data import load_dataset
from .networks import classifier, transformer
from .sampling import Problem, dataset_problem
from .user_problem import model_problem, takes
from .theory_problems import least_squares, quadratic, worst_case_quadratic

__all__ = ["Problem", "build_problem", "problem_from_object", "BUILTIN_MODELS"]

BUILTIN_MODELS = ("quadratic", "worst_case_quadratic", "least_squares", "logreg", "mlp", "cnn", "transformer")


def build_problem(scenario: Scenario, num_workers: int) -> Problem:
    """The problem `scenario.model` / `scenario.data` describe, dealt out to `num_workers`."""
    model, data, seed = scenario.model, scenario.data, scenario.run.seed
    if data.batch_size < 1:
        raise ScenarioError("data.batch_size", f"= {data.batch_size}: must be >= 1")
    if model.name == "quadratic":
        return quadratic(model, seed)
    if model.name == "worst_case_quadratic":
        return worst_case_quadratic(model, seed)
    if model.name == "least_squares":
        return least_squares(model, data, seed, num_workers)
    if model.name == "transformer":
        return transformer(model, data, seed, num_workers)
    if ":" in model.name:
        init, loss, accuracy = _user_model(model)
        return model_problem(model.name, init, loss, accuracy, load_dataset(data, seed), data, seed, num_workers)
    if model.name in ("logreg", "mlp", "cnn"):
        dataset = load_dataset(data, seed)
        init, loss, accuracy = classifier(model, data, dataset)
        return dataset_problem(model.name, init, loss, accuracy, dataset, data, seed, num_workers)
    hint = closest(model.name, BUILTIN_MODELS)
    raise ScenarioError(
        "model.name",
        f"unknown model {model.name!r}" + (f": did you mean {hint!r}?" if hint else "")
        + f" (built in: {' | '.join(BUILTIN_MODELS)}; a user model is written 'package.module:factory')",
    )


def problem_from_object(obj: Any, scenario: Scenario, num_workers: int) -> Problem:
    """``simulate(..., problem=obj)``: an object with ``init(key)``, ``loss(params, batch, ...)`` and
    optionally ``accuracy(params, batch, ...)`` (see `user_problem`), trained on the data set the
    scenario's ``[data]`` names. A built `Problem` is taken as it is."""
    if isinstance(obj, Problem):
        return obj
    name = getattr(obj, "name", None) or type(obj).__name__
    missing = [m for m in ("init", "loss") if not callable(getattr(obj, m, None))]
    if missing:
        raise ScenarioError("problem", f"{name}: has no {' or '.join(missing)} method; a problem object needs init(key) and "
                            "loss(params, batch), and may have accuracy(params, batch)")
    accuracy = getattr(obj, "accuracy", None)
    if accuracy is not None and not callable(accuracy):
        raise ScenarioError("problem", f"{name}: accuracy must be a method accuracy(params, batch) or absent")
    _check_init(obj.init, f"{name}.init", stateful=takes(obj.loss, "state"))
    data = scenario.data
    if data.batch_size < 1:
        raise ScenarioError("data.batch_size", f"= {data.batch_size}: must be >= 1")
    return model_problem(name, obj.init, obj.loss, accuracy, load_dataset(data, scenario.run.seed), data, scenario.run.seed,
                         num_workers, where="problem")


def _user_model(model: ModelConfig) -> tuple[Callable, Callable, Callable | None]:
    """``factory(**model.options)`` -> (init, loss) or (init, loss, accuracy)."""
    factory = load_object(model.name, "model.name")
    try:
        inspect.signature(factory).bind(**model.options)
    except TypeError as error:
        raise ScenarioError("model.options", f"= {dict(model.options)}: {model.name} does not accept them ({error})") from None
    except ValueError:  # no signature to check (a builtin); let the call decide
        pass
    out = factory(**model.options)
    if not (isinstance(out, tuple) and len(out) in (2, 3) and all(callable(f) for f in out)):
        raise ScenarioError("model.name", f"{model.name}(**model.options) must return (init, loss) or (init, loss, accuracy), got {out!r:.80}")
    init, loss, *rest = out
    _check_init(init, model.name, stateful=takes(loss, "state"))
    return init, loss, rest[0] if rest else None


def _check_init(init: Callable, name: str, stateful: bool = False) -> None:
    """A user model's ``init(key)`` must return a pytree of floating-point arrays (the parameters
    the server updates; with a stateful loss, a pair (params, state) of them). Anything else (an
    Equinox module with its activation functions, integer buffers, strings) would end in a long
    JAX traceback: say what it returned and the fix."""
    returned: dict[str, Any] = {}

    def probe(key: jax.Array) -> list[Any]:
        returned["out"] = out = init(key)
        return [leaf for leaf in jax.tree.leaves(out) if isinstance(leaf, jax.Array)]

    jax.eval_shape(probe, jax.random.PRNGKey(0))  # traced only: nothing is computed
    out = returned["out"]
    if stateful and not (isinstance(out, tuple) and len(out) == 2):
        raise ScenarioError("model.name", f"{name}: its loss takes state, so init must return (params, state); it returned "
                            f"a {type(out).__name__}")
    leaves = jax.tree_util.tree_flatten_with_path(out)[0]
    bad = [(path, leaf) for path, leaf in leaves if not _float_array(leaf)]
    if leaves and not bad:
        return
    kind = type(out)
    equinox = any(base.__module__.split(".")[0] == "equinox" for base in kind.__mro__)
    what = "an Equinox module" if equinox else f"a {kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else f"a {kind.__name__}"
    where = "no arrays at all" if not bad else (f"a leaf that is not a floating-point array at {jax.tree_util.keystr(bad[0][0]) or 'its root'}: "
                                                f"{_describe(bad[0][1])}")
    raise ScenarioError("model.name", f"{name}: init returned {what} with {where}; init must return a pytree (dicts, lists, tuples) "
                        "of floating-point arrays only, e.g. for an Equinox model return params from "
                        "params, static = eqx.partition(model, eqx.is_inexact_array) and rebuild it in loss with eqx.combine(params, static)")


def _float_array(leaf: Any) -> bool:
    if isinstance(leaf, float):
        return True
    dtype = getattr(leaf, "dtype", None)
    return isinstance(leaf, (jax.Array, np.ndarray)) and dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def _describe(leaf: Any) -> str:
    if callable(leaf):
        return f"the function {getattr(leaf, '__name__', type(leaf).__name__)}"
    dtype = getattr(leaf, "dtype", None)
    return f"an array of {dtype}" if dtype is not None else f"a {type(leaf).__name__} ({leaf!r:.30})"
