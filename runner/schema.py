"""Typed options: every plugin declares its own, beside its code.

A plugin is what a config group's ``_target_`` names: a recipe class, a data loader, a model
builder. It declares its options as one :class:`Options` subclass (pydantic), the single source
of each option's type, default, constraint and one-line description::

    class ShoutOptions(Options):
        volume: int = Field(3, ge=1, description="how loud")

    @options(ShoutOptions)            # a function plugin; a class sets ``Options = ShoutOptions``
    def shout(input_shape, num_classes, volume=3): ...

The runner's own keys of a group (a recipe's ``name``/``use_case``, a model's ``input_scaling``
...) are a *meta* schema kept by the runner, apart from the plugin's arguments. This module
checks a composed node against meta + options (one line per bad value naming the key, the value
and what is allowed; an unknown key names the closest valid one), builds the plugin with only its
own options, and renders the option tables of the README. Nothing here imports TensorFlow: a
plugin module keeps its heavy imports inside its functions.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from runner.allowed import refused_target
from runner.describe import describe, field_annotation, item_type, unwrap
from runner.errors import RunnerError

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


class Options(BaseModel):
    """Base of every option schema: unknown keys refused, no type coercion, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def options(schema: type[Options]) -> Callable[[Callable], Callable]:
    """Declare ``schema`` as a function plugin's options (a class sets ``Options`` itself).

    The schema is the one place an option's default lives: the function declares its options
    as keyword-only parameters *without* defaults, and a call from Python that leaves one out
    gets the schema's default.
    """

    def attach(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters

        @functools.wraps(fn)
        def with_defaults(*args: Any, **kwargs: Any) -> Any:
            given = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
            fill = {k: v for k, v in defaults(schema).items() if k in params and k not in given}
            return fn(*args, **kwargs, **fill)

        with_defaults.Options = schema  # type: ignore[attr-defined]
        return with_defaults

    return attach


def defaults(schema: type[BaseModel]) -> dict[str, Any]:
    """Every optional field's default, as plain values (nested schemas as mappings)."""
    out: dict[str, Any] = {}
    for name, field in schema.model_fields.items():
        if field.is_required():
            continue
        value = field.get_default(call_default_factory=True)
        out[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return out


def tags(
    *,
    follows: str | None = None,
    seed: bool = False,
    trains: bool = True,
    names: str | None = None,
) -> dict[str, Any]:
    """What the core must know of a plugin's key, declared on its field:
    ``Field(0, ge=0, **tags(follows="seed", seed=True))``.

    Args:
        follows: in a config the default is this key's value (``${seed}``); from Python, the
            plain default.
        seed: the key seeds a random draw (``results.json`` lists it under ``seeds``).
        trains: false for a key that does not change the trained model (left out of the
            baseline cache key: a test subset, how a model is converted).
        names: the value names an option of this config group (``"recipe"``: a file of
            ``conf/recipe``), checked with the config before any work starts; ``"layer"``: a
            layer of the model, checked by the recipe before its own work
            (:func:`runner.recipes.base.check_layer_names`).
    """
    extra = {"follows": follows, "seed": seed, "trains": trains, "names": names}
    return {"json_schema_extra": extra}


def follows(key: str) -> dict[str, Any]:
    """``Field(0, **follows("seed"))``: see :func:`tags`."""
    return tags(follows=key)


def tagged(schema: type[BaseModel], tag: str, value: Any = True) -> list[str]:
    """The keys of ``schema`` whose :func:`tags` say ``tag=value`` (``trains`` defaults to
    true, the others to false)."""
    default = {"trains": True}.get(tag)
    out = []
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get(tag, default) == value:
            out.append(name)
    return out


def config_default(field: FieldInfo) -> Any:
    """A field's default as a config node shows it: ``???`` where one is required,
    ``${key}`` where it follows another key, else the plain default."""
    if field.is_required():
        return "???"
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("follows"):
        return "${" + str(extra["follows"]) + "}"
    return _as_config(field.get_default(call_default_factory=True))


def _as_config(value: Any) -> Any:
    """A default as YAML would hold it: a nested schema as a mapping, a tuple as a list."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: _as_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_config(v) for v in value]
    return value


def config_node(schema: type[BaseModel]) -> dict[str, Any]:
    """``schema`` as a config node: every key with its :func:`config_default`.

    Registered in Hydra's ConfigStore (``runner.config.register_bases``) and extended by the
    YAML files, which then hold only what differs from the schema.
    """
    return {name: config_default(field) for name, field in schema.model_fields.items()}


# --------------------------------------------------------------------------- resolving plugins
def resolve(target: str) -> Any:
    """The object a ``_target_`` names (``package.module.name``), imported only when its package
    is allowed (:func:`refused_target`).

    Raises:
        RunnerError: it is not allowed, or cannot be imported (the reason, and that the module
            must be importable).
    """
    why = refused_target(target)
    if why:
        raise RunnerError(f"_target_={target}: {why}")
    module, _, name = str(target).rpartition(".")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise RunnerError(
            f"_target_={target}: cannot import {module} ({e}); is its package installed or on PYTHONPATH?"
        ) from None
    try:
        return getattr(obj, name)
    except AttributeError:
        raise RunnerError(f"_target_={target}: {module} has no {name}") from None


def options_of(plugin: Any, target: str = "") -> type[Options]:
    """A plugin's declared schema.

    Raises:
        RunnerError: it declares none (and how to declare one).
    """
    schema = getattr(plugin, "Options", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    raise RunnerError(
        f"_target_={target or plugin}: declares no options schema; give it one "
        "(class Options(runner.schema.Options) on a class, @runner.schema.options(...) on a function)"
    )


def combined(meta: type[Options], schema: type[Options]) -> type[Options]:
    """One model with the runner's keys and the plugin's (a key in both is read by both)."""
    if schema is meta or issubclass(schema, meta):
        return schema
    if issubclass(meta, schema):  # a plugin with no options of its own (the Options base)
        return meta
    return type(f"{schema.__name__}With{meta.__name__}", (schema, meta), {})


# --------------------------------------------------------------------------- checking
def problems(node: Mapping[str, Any], schema: type[BaseModel], prefix: str) -> list[str]:
    """One line per bad or unknown key of ``node`` (hydra's ``_target_`` etc. excluded)."""
    values = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    try:
        schema.model_validate(values)
    except ValidationError as e:
        return _lines(e, schema, values, prefix)
    return []


def parse(
    node: Mapping[str, Any], schema: type[Options], where: str, strict: bool = False
) -> Options:
    """``node`` as ``schema`` (keys of other schemas ignored, unless ``strict``).

    Raises:
        RunnerError: a bad (or, ``strict``, unknown) value, one line each.
    """
    values = {
        k: v
        for k, v in node.items()
        if strict or (k in schema.model_fields and k not in HYDRA_KEYS)
    }
    try:
        return schema.model_validate(values)
    except ValidationError as e:
        raise RunnerError(
            "bad config value: " + "\nbad config value: ".join(_lines(e, schema, values, where))
        ) from None


def _lines(e: ValidationError, schema: type[BaseModel], values: Any, prefix: str) -> list[str]:
    out: list[str] = []
    for err in e.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            out.append(_unknown(schema, values, loc, prefix))
            continue
        if not loc and err["type"] == "value_error":  # a rule across keys (model_validator)
            out.append(err["msg"].removeprefix("Value error, "))
            continue
        annotation, key, value = _walk(schema, values, loc, prefix)
        if key in {o.split(":", 1)[0].split("=", 1)[0] for o in out}:
            continue  # one line per key (a list's items may fail one by one)
        shown = repr(value) if isinstance(value, str) else _plain(value)
        if err["type"] == "value_error":
            out.append(f"{key}={shown}: {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "missing":
            out.append(f"{key} is missing: expected {describe(annotation)}")
        else:
            out.append(f"{key}={shown}: expected {describe(annotation)}")
    return out


def _walk(schema: type[BaseModel], values: Any, loc: tuple, prefix: str) -> tuple[Any, str, Any]:
    """The annotation, dotted key and value that an error location points at."""
    annotation: Any = schema
    key, value = prefix, values
    for part in loc:
        base, _ = unwrap(annotation)
        if isinstance(part, int):
            key += f"[{part}]"
            annotation = item_type(base)
            value = value[part] if isinstance(value, (list, tuple)) and part < len(value) else None
            continue
        if isinstance(base, type) and issubclass(base, BaseModel) and part in base.model_fields:
            annotation = field_annotation(base.model_fields[part])
        else:
            break  # a union's branch name or similar: stop at the last real key
        key = f"{key}.{part}" if key else str(part)
        value = value.get(part) if isinstance(value, Mapping) else None
    return annotation, key, value


def _unknown(schema: type[BaseModel], values: Any, loc: tuple, prefix: str) -> str:
    *parent, name = loc
    annotation, key, _ = _walk(schema, values, tuple(parent), prefix)
    base, _ = unwrap(annotation)
    known = (
        list(base.model_fields) if isinstance(base, type) and issubclass(base, BaseModel) else []
    )
    full = f"{key}.{name}" if key else str(name)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = (
        f"did you mean {key + '.' if key else ''}{close[0]}?"
        if close
        else f"valid keys: {', '.join(sorted(known))}"
    )
    return f"{full}: unknown key; {hint}"


def _plain(v: Any) -> str:
    return str(v).replace("'", "")


# --------------------------------------------------------------------------- building
def call(plugin: Callable, opts: Options, **runtime: Any) -> Any:
    """Call a plugin with its options and the runtime values it declares parameters for.

    A plugin that has an ``opts`` parameter (a recipe class) receives the validated options
    object itself; any other gets one keyword argument per option. Runtime values are what the
    runner offers every plugin of a group (a model builder: ``input_shape``, ``num_classes``,
    ``vocab_size`` ...; a recipe: ``meta``); a plugin takes the ones it names.
    """
    params = inspect.signature(plugin).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in runtime.items() if takes_all or k in params}
    if "opts" in params:
        return plugin(**given, opts=opts)
    return plugin(**given, **{k: getattr(opts, k) for k in type(opts).model_fields})
