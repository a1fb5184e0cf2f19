"""A name -> function table for the few places where users plug in their own algorithm."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

FunctionT = TypeVar("FunctionT", bound=Callable[..., object])


class Registry(Generic[FunctionT]):
    """Maps names to functions; a lookup of an unknown name lists the valid ones.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"policy loss"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._functions: dict[str, FunctionT] = {}

    def register(self, name: str) -> Callable[[FunctionT], FunctionT]:
        """Returns a decorator that registers a function under ``name``.

        Raises:
            ValueError: If ``name`` is already registered; silently replacing a built-in would make a
                recipe mean something different depending on import order.
        """

        def decorator(function: FunctionT) -> FunctionT:
            if name in self._functions:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._functions[name] = function
            return function

        return decorator

    def get(self, name: str) -> FunctionT:
        """Returns the function registered under ``name``.

        Raises:
            ValueError: If no function is registered under ``name``; the message lists the valid names.
        """
        try:
            return self._functions[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._functions))}"
            ) from None

    def names(self) -> list[str]:
        """Returns the registered names, sorted."""
        return sorted(self._functions)
