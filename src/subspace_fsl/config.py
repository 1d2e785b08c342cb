"""Settings: YAML file + ``key.path=value`` overrides, validated and completed by the one schema.

The schema (``workflow/schemas/config.schema.yaml``, shipped in the package as
``config.schema.yaml``) is the only place where a setting and its default are defined; the
Snakemake workflow validates ``config.yaml`` against the same file.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

Config = dict[str, Any]


class ConfigError(ValueError):
    """A configuration that does not satisfy the schema; the message names the key."""


def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as handle:
        return yaml.safe_load(handle)


def _defaults_filling_validator() -> type:
    """jsonschema Draft 7 validator that writes each property's ``default`` into the instance.

    An object's default is set before its own properties are visited, so nested defaults
    (``dataset: {default: {}}`` then ``dataset.image_size: {default: 84}``) are all filled.
    """
    base = jsonschema.Draft7Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # the offending key is in the message, not in the path
        return ".".join(parts) or "<top level>"
    return ".".join(parts) or "<top level>"


def validate(config: Mapping[str, Any], source: str = "config") -> Config:
    """Return a completed deep copy of ``config``; raise ``ConfigError`` naming the bad key."""
    completed = copy.deepcopy(dict(config))
    validator = _defaults_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(completed), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(lines))
    return completed


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.shot=1"`` -> (["train", "shot"], 1); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    return keys, yaml.safe_load(raw)


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> Config:
    result = copy.deepcopy(dict(config))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return result


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()
) -> Config:
    """Load a YAML file (or nothing: all defaults), apply overrides, validate and complete."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path) as handle:
                raw = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {source} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {source} must hold a mapping, not {type(raw).__name__}")
    return validate(apply_overrides(raw, overrides), source=source)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    A reader never sees a half-written file, and a failure leaves no temporary file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside and removed only after the new folder is complete;
    on failure the temporary folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build-"))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Save the resolved configuration next to an output (atomically)."""
    atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
