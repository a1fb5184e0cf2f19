"""The one registry class, and the plug points a recipe names: policy losses, advantage estimators, evaluators.

A decorator registers; looking up an unknown name raises an error that lists the valid names. A registry
may know its built-in names before their modules are imported (``providers``: name -> the module that
registers it), so the recipe schema checks `policy_loss:`, `advantage:` and evaluator `kind:` without
loading torch; the module is imported on the first `get`. A recipe can also name a function in the user's
own file, ``path/to/file.py:function`` (see `is_file_function`), as `source: python` rewards do.

No third-party imports: the recipe schema uses this without loading torch.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_FILE_FUNCTION = re.compile(r"^(?P<path>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


class Registry(Generic[T]):
    """A name -> object table with a registering decorator and a helpful lookup error.

    Args:
        what: what the registry holds, for error messages (e.g. ``"policy loss"``).
        providers: built-in names and the module that registers each; the names count as registered
            before the module is imported.
        labels: built-in names' labels (e.g. an advantage estimator's calling convention, ``outcome`` or
            ``token``), so a recipe's choice is checked against what its stage calls, without imports.

    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def red(): return "#f00"
    >>> colours.get("red")()
    '#f00'
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue'; valid: red
    """

    def __init__(self, what: str, providers: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None):
        self.what = what
        self._items: dict[str, T] = {}
        self._providers = dict(providers or {})
        self._labels = dict(labels or {})

    def register(self, name: str, label: str | None = None) -> Callable[[T], T]:
        """A decorator that registers its argument under ``name`` (with ``label``, if given).

        Raises:
            ValueError: if ``name`` is taken (silently replacing an entry would make a recipe mean something
                different depending on import order), or its label contradicts the declared one.
        """

        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            declared = self._labels.get(name)
            if label is not None and declared is not None and label != declared:
                raise ValueError(f"{self.what} {name!r} is declared {declared!r} but registered {label!r}")
            self._items[name] = item
            if label is not None:
                self._labels[name] = label
            return item

        return decorate

    def get(self, name: str) -> T:
        """The object registered under ``name`` (importing its provider module first if need be).

        Raises:
            ValueError: for an unknown name; the message lists the valid ones.
        """
        if name not in self._items and name in self._providers:
            importlib.import_module(self._providers[name])
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}") from None

    def check(self, name: str, label: str | None = None) -> str:
        """``name`` if it is registered (or provided), with ``label`` if one is asked for, without importing
        anything; else a ValueError that lists the valid names."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names(label))}")
        if label is not None and self._labels.get(name, label) != label:
            raise ValueError(
                f"{self.what} {name!r} has the calling convention {self._labels[name]!r}; this stage calls "
                f"{label!r} ones: {', '.join(self.names(label))}"
            )
        return name

    def names(self, label: str | None = None) -> list[str]:
        """Every registered or provided name (with ``label`` only, if given), sorted."""
        every = set(self._items) | set(self._providers)
        return sorted(name for name in every if label is None or self._labels.get(name) == label)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._providers


def is_file_function(value: str) -> bool:
    """Whether ``value`` names a function in a file, ``path/to/file.py:function``.

    >>> is_file_function("my_losses.py:clipped"), is_file_function("grpo")
    (True, False)
    """
    return _FILE_FUNCTION.match(value) is not None


def check_plug_in(registry: Registry, value: str, label: str | None = None) -> str:
    """A recipe's choice of plug-in, checked without imports: a registered name (with ``label``, if given)
    or ``file.py:function`` (whose signature the stage checks when it loads it)."""
    if ":" in value and not is_file_function(value):
        raise ValueError(f"{registry.what} {value!r}: a function in a file is written 'path/to/file.py:function'")
    return value if is_file_function(value) else registry.check(value, label)


POLICY_LOSSES: Registry[Callable[..., object]] = Registry(
    "policy loss", {name: "posttrain.algorithms.policy_losses" for name in ("ppo_clip", "grpo", "gspo", "cispo")}
)
# labels: the calling convention, `outcome` (one reward per completion) or `token` (per-token rewards and values)
ADVANTAGE_ESTIMATORS: Registry[Callable[..., object]] = Registry(
    "advantage estimator",
    {
        name: "posttrain.algorithms.advantages"
        for name in ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    },
    {
        "gae": "token", "grpo": "outcome", "dr_grpo": "outcome", "rloo": "outcome", "reinforce_pp": "outcome",
        "reinforce_pp_baseline": "outcome",
    },
)
EVALUATORS: Registry[Callable[..., dict[str, float]]] = Registry(
    "evaluator",
    {
        "exact_match": "posttrain.eval.evaluators",
        "perplexity": "posttrain.eval.evaluators",
        "pairwise_accuracy": "posttrain.eval.preference",
        "preference_accuracy": "posttrain.eval.preference",
        "principle_violations": "posttrain.eval.constitution",
        "lm_eval": "posttrain.eval.lm_eval_harness",
    },
)
