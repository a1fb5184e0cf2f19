"""Plain data across the sandbox boundary: values become tagged JSON and come back as builtins only.

The code verifier's trusted test runner calls the candidate in another sandboxed process; arguments and
return values cross as text in this format. Decoding builds only `None`, `bool`, `int`, `float`, `complex`,
`str`, `bytes`, `list`, `tuple`, `dict`, `set` and `frozenset` — never an object of the solution's classes —
so an `__eq__` that always answers True, or an `int` subclass, cannot reach the tests. Anything else, a
malformed text, or nesting deeper than `MAX_DEPTH` raises `ValueError`.

Scalars are plain JSON (`true`, `3`, `"s"`, `null`, finite floats); floats that JSON lacks and every
container are one-key objects: `{"l": [...]}` list, `{"t": [...]}` tuple, `{"d": [[k, v], ...]}` dict
(any plain keys), `{"s": [...]}` set, `{"fs": [...]}` frozenset, `{"b": "<hex>"}` bytes,
`{"x": "nan"|"inf"|"-inf"}` float, `{"c": [re, im]}` complex.

This file is also mounted read-only into the sandboxes (stdlib only, no package imports).
Hand-written: `json` alone loses tuples, sets, bytes and non-string keys; `pickle`/`marshal` must never
read untrusted bytes; `ast.literal_eval` has no depth or size guard and imports `ast` in every sandbox.

>>> decode(encode({(1, 2): [b"x", {3.5}], "k": None}))
{(1, 2): [b'x', {3.5}], 'k': None}
>>> class Liar(int):
...     def __eq__(self, other): return True
>>> type(decode(encode(Liar(4))))
<class 'int'>
"""

import json
import math

MAX_DEPTH = 100
_SCALARS = (bool, int, float, str, type(None))
_FLOAT_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_tree(value, depth):
    if depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH}")
    depth += 1
    if value is None or isinstance(value, bool):
        return value if value is None else bool(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"x": repr(number)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return {"b": bytes(value).hex()}
    if isinstance(value, complex):
        return {"c": [_to_tree(value.real, depth), _to_tree(value.imag, depth)]}
    if isinstance(value, dict):
        return {"d": [[_to_tree(k, depth), _to_tree(v, depth)] for k, v in dict.items(value)]}
    for kind, tag in ((list, "l"), (tuple, "t"), (frozenset, "fs"), (set, "s")):
        if isinstance(value, kind):
            return {tag: [_to_tree(item, depth) for item in kind.__iter__(value)]}
    raise ValueError(f"{type(value).__name__} is not plain data")


def encode(value) -> str:
    """One line of tagged JSON for a plain value (subclasses of builtins are converted to the builtin).

    Raises:
        ValueError: If the value holds anything else (a function, a class instance...).
    """
    return json.dumps(_to_tree(value, 0), separators=(",", ":"), allow_nan=False)


def _from_tree(node, depth):
    if depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH}")
    depth += 1
    if type(node) in _SCALARS:
        return node
    if type(node) is not dict or len(node) != 1:
        raise ValueError(f"malformed plain-data node of type {type(node).__name__}")
    ((tag, body),) = node.items()
    if tag == "x" and body in _FLOAT_NAMES:
        return _FLOAT_NAMES[body]
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError(f"malformed plain-data node {tag!r}")
    if tag == "d":
        if not all(type(pair) is list and len(pair) == 2 for pair in body):
            raise ValueError("malformed plain-data dict")
        return {_from_tree(key, depth): _from_tree(value, depth) for key, value in body}
    items = [_from_tree(item, depth) for item in body]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    if tag in ("s", "fs"):
        return set(items) if tag == "s" else frozenset(items)
    if tag == "c" and len(items) == 2 and all(type(part) in (int, float) for part in items):
        return complex(*items)
    raise ValueError(f"malformed plain-data node {tag!r}")


def decode(text):
    """The plain value a line of tagged JSON holds.

    Raises:
        ValueError: If the text is not valid tagged JSON of plain data (or is nested too deeply).
    """
    try:
        return _from_tree(json.loads(text), 0)
    except (RecursionError, TypeError) as exc:  # TypeError: an unhashable key or set member
        raise ValueError(f"malformed plain data: {type(exc).__name__}") from None
