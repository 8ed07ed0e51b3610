"""Typed run configs: nested dataclasses filled from layered dicts, YAML and ``a.b=value`` overrides.

Like nanoGPT's configurator, but strict: an unknown key, a value of the wrong type or out of
its declared range is a ``UserError`` naming the key (with a suggestion for near misses).
Values given on the command line are parsed as YAML scalars/lists (``data.batch_size=64``,
``optim.betas=[0.9,0.95]``).

Precedence, the one rule of every entry point (``resolve_config``)::

    dataclass defaults  <  recipes (YAML in configs/, chosen by the task)  <  --config FILE  <  section.key=value

Sections merge key by key at every level; a value replaces a value.

A field declares its allowed values beside its default: ``bounded(1, lo=1)``,
``bounded(0.75, lo=0.0, hi=1.0, hi_open=True)`` (a tuple of numbers: each of them),
``choice("auto", "bf16", "fp32")``, ``subset(["a"], "a", "b", "c")`` (a list of some of the options).

YAML is read by `load_yaml`: what a file (or an override) expands to is bounded
(`MAX_YAML_VALUES`): aliases repeat what they name, and a few hundred bytes of them can stand
for billions of values.
"""
import copy
import dataclasses
import difflib
import math
import re
import reprlib
import typing
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Type, TypeVar, Union

import yaml

from uniemox.errors import UserError

T = TypeVar("T")
MAX_YAML_VALUES = 100_000  # a run config has a few hundred; a file of aliases can expand to billions
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 80, 80, 3


def show(value: Any) -> str:
    """A value in an error message, cut short (it may be huge)."""
    return _SHOW.repr(value)
PRECEDENCE = ("defaults < recipe < --config FILE < section.key=value overrides "
              "(sections merge key by key; unknown keys, wrong types and out-of-range values are refused)")


# -- declaring fields ------------------------------------------------------------------------------
def bounded(default, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False):
    """A numeric field (or a tuple of numbers) with its allowed range (None: unbounded on that
    side); ``default`` may be ``dataclasses.MISSING`` for a field without one."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def choice(default, *options):
    """A field that takes one of ``options`` (``default`` among them)."""
    return dataclasses.field(default=default, metadata={"choices": (default,) + tuple(options)})


def subset(default: Sequence, *options):
    """A list field each of whose items is one of ``options``."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={"subset": tuple(options)})


def _check_range(value, spec, key: str) -> None:
    lo, hi, lo_open, hi_open = spec
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        for item in value:
            _check_range(item, spec, key)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r}: must be a finite number, got {value!r}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "unbounded" if lo is None else f"{'(' if lo_open else '['}{lo}"
        right = "unbounded" if hi is None else f"{hi}{')' if hi_open else ']'}"
        raise UserError(f"config key {key!r}: must be in {left}, {right}, got {value!r}")


# -- dicts into dataclasses ------------------------------------------------------------------------
def _type_name(tp) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# YAML 1.1 (PyYAML) reads 5e-4 as a string: it wants a dot (5.0e-4); a config takes both
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key {key!r}: expected {_type_name(tp)}, got {show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r}: expected a list, got {show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"config key {key!r}: expected {len(args)} values, got {show(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        return origin(_coerce(v, item, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r}: expected a mapping, got {show(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r}: expected a section (mapping), got {show(value)}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"config key {key!r}: expected true/false, got {show(value)}")
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"config key {key!r}: expected {_type_name(tp)}, got {show(value)} "
                        f"({type(value).__name__})")
    return value


def _unknown(key: str, valid: Iterable[str]) -> UserError:
    valid = sorted(valid)
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f"; valid keys: {', '.join(valid)}"
    return UserError(f"unknown config key {key!r}{hint}")


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """``cls`` from a nested dict; types and declared ranges/choices are checked per key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in fields:
            raise _unknown(prefix + key, fields)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    cfg = cls(**kwargs)
    for name, f in fields.items():  # defaults are checked too: a subclass may change them
        value = getattr(cfg, name)
        if "range" in f.metadata:
            _check_range(value, f.metadata["range"], prefix + name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise UserError(f"config key {prefix + name!r}: must be one of "
                            f"{', '.join(map(str, f.metadata['choices']))}, got {show(value)}")
        for item in value if "subset" in f.metadata else ():
            if item not in f.metadata["subset"]:
                raise UserError(f"config key {prefix + name!r}: each item must be one of "
                                f"{', '.join(f.metadata['subset'])}, got {item!r}")
    return cfg


def to_dict(cfg) -> Dict[str, Any]:
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


# -- layers ------------------------------------------------------------------------------------------
def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``["optim.blr=1e-3", "model.name=uniemox_vit_tiny_patch16"]`` into a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value (e.g. data.batch_size=64)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, f"override {key.strip()}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def merge_dicts(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``, sections merged key by key (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _SelfReference(Exception):
    pass


def _values(node: yaml.Node, sizes: Dict[int, int], open_nodes: set) -> int:
    """How many values ``node`` stands for once every alias is expanded (each node counted once:
    aliases share their node, so this costs the size of the file, not of its expansion)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _SelfReference()
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_values(k, sizes, open_nodes) + _values(v, sizes, open_nodes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_values(item, sizes, open_nodes) for item in node.value)
    else:
        size = 1
    open_nodes.discard(id(node))
    sizes[id(node)] = min(size, MAX_YAML_VALUES + 1)
    return sizes[id(node)]


def load_yaml(stream, where: str) -> Any:
    """``yaml.safe_load`` whose result is refused, before it is built, when it would expand to more
    than MAX_YAML_VALUES values or refers to itself (a UserError naming ``where``)."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is not None and _values(node, {}, set()) > MAX_YAML_VALUES:
            raise UserError(f"{where}: refused: expands to more than {MAX_YAML_VALUES:,} values (YAML aliases "
                            "repeat what they name)")
        return None if node is None else loader.construct_document(node)
    except _SelfReference:
        raise UserError(f"{where}: refused: it holds an alias that refers to itself") from None
    except RecursionError:
        raise UserError(f"{where}: refused: it is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f, f"config file {path}") or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return data


Recipes = Union[Sequence[Dict[str, Any]], Callable[[Dict[str, Any]], Sequence[Dict[str, Any]]]]


def resolve_config(cls: Type[T], path: Optional[str] = None, overrides: Iterable[str] = (),
                   recipes: Recipes = ()) -> T:
    """The run config by the one precedence rule (module doc). ``recipes`` is a list of dicts,
    or a function of what the user gave (``--config`` merged with the overrides) returning it:
    a task picks its recipes from the user's choices (e.g. the sample set when no data is named)."""
    user = apply_overrides(read_yaml(path) if path else {}, overrides)
    layers = recipes(copy.deepcopy(user)) if callable(recipes) else recipes
    data: Dict[str, Any] = {}
    for layer in list(layers) + [user]:
        data = merge_dicts(data, layer)
    return from_dict(cls, data)


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Iterable[str] = (),
                base: Optional[Dict[str, Any]] = None) -> T:
    """Defaults of ``cls`` < ``base`` < the YAML file at ``path`` < ``overrides``."""
    return resolve_config(cls, path, overrides, [base] if base else ())


def save_config(cfg, path: str) -> None:
    from uniemox.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
