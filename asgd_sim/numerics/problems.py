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

from ..errors import ScenarioError, closest
from ..scenario.config import ModelConfig, Scenario
from ..scenario.plugins import load_object
from .data import load_dataset
from .networks import classifier, transformer
from .sampling import Problem, dataset_problem
from .theory_problems import least_squares, quadratic, worst_case_quadratic

__all__ = ["Problem", "build_problem", "BUILTIN_MODELS"]

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
        return dataset_problem(model.name, init, loss, accuracy, load_dataset(data, seed), data, seed, num_workers)
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
    return init, loss, rest[0] if rest else None
