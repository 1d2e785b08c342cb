"""Settings: YAML file + ``key.path=value`` overrides, validated and completed by the one schema.

The schema (``workflow/schemas/config.schema.yaml``, shipped in the package as
``config.schema.yaml``) is the only place where a setting and its default are defined; the
Snakemake workflow validates ``config.yaml`` with the same function (``validate``).

Config files and ``--set`` values are read with YAML 1.2 core-schema rules (``CoreLoader``):
``010`` is 10, ``0o10`` is 8, ``0x1F`` is 31, ``1e-3`` is 0.001, ``yes``/``on`` are strings.
Snakemake reads config files with PyYAML's YAML 1.1 rules; ``check_same_reading`` refuses a
file whose values the two read differently, so the workflow and its jobs cannot disagree.
Every number must be finite: ``.nan`` / ``.inf`` are refused wherever the schema wants one.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import math
import os
import re
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


# --- YAML 1.2 core schema on PyYAML -------------------------------------------------------

#: (tag, pattern, first characters) of the YAML 1.2 core schema's implicit scalars
#: (https://yaml.org/spec/1.2.2/#1033-core-schema); int is tried before float
CORE_RESOLVERS = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
)


class CoreLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema instead of YAML 1.1's resolvers
    (no octal ``010``, no ``yes``/``on`` booleans, no sexagesimals, no timestamps).
    Merge keys (``<<``) stay, as in ruamel.yaml's 1.2 mode."""


class CoreDumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 *or* 1.2 would read as something else, so a saved
    config reads back the same with PyYAML, Snakemake and ``CoreLoader``."""


CoreLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in value if tag == "tag:yaml.org,2002:merge"]
    for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in CORE_RESOLVERS:
    CoreLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
    CoreDumper.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _construct_core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Decimal, ``0o`` octal or ``0x`` hex (YAML 1.2); a leading zero is just decimal."""
    text = str(loader.construct_scalar(node))
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


CoreLoader.add_constructor("tag:yaml.org,2002:int", _construct_core_int)


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are all distinct: YAML forbids duplicates, PyYAML keeps the last
    silently. Keys merged in with ``<<`` may be overridden, as YAML's merge key allows."""
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_line.get(key)
        except TypeError:  # an unhashable key: PyYAML reports it itself
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen + 1})",
                key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


CoreLoader.add_constructor("tag:yaml.org,2002:map", _construct_unique_mapping)


def yaml_load(text: str) -> Any:
    """Parse YAML text with the 1.2 core schema (``CoreLoader``)."""
    return yaml.load(text, Loader=CoreLoader)


def yaml_dump(data: Any) -> str:
    """YAML text that both YAML 1.1 and 1.2 readers read back as ``data``."""
    return yaml.dump(data, Dumper=CoreDumper, sort_keys=False)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of a settings file; ``ConfigError`` naming it when it is not one."""
    source = Path(path)
    try:
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {source} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {source} is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {source} is not a text (UTF-8 YAML) file: byte 0x{exc.object[exc.start]:02x} "
            f"at offset {exc.start}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {source} cannot be read: {exc.strerror or exc}") from None


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Read a YAML file with the 1.2 core schema; ``ConfigError`` naming the file otherwise."""
    text = read_text_file(path, what)
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None


def _differences(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() | new.keys():
            yield from _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(a, b, f"{prefix}{i}.")
    elif type(old) is not type(new) or (old != new and not _both_nan(old, new)):
        yield prefix.rstrip("."), old, new


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def check_same_reading(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse a config file that YAML 1.1 (PyYAML, what Snakemake reads ``configfile`` with)
    and YAML 1.2 (this package) read differently, e.g. ``shot: 010`` (8 vs 10)."""
    for path in paths:
        text = read_text_file(path, "config file")
        try:
            old, new = yaml.safe_load(text), yaml_load(text)
        except yaml.YAMLError as exc:
            problem = yaml_problem(exc)
            raise ConfigError(f"config file {path} is not valid YAML: {problem}") from None
        for key, v11, v12 in sorted(_differences(old, new), key=lambda d: d[0]):
            raise ConfigError(
                f"config file {path}: {key} reads as {v11!r} under YAML 1.1 (Snakemake) but "
                f"{v12!r} under YAML 1.2 (subspace-fsl); write it so both agree: numbers in plain "
                f"decimal (10, 0.001, 1.0e-3), true/false for booleans, strings quoted"
            )


def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as handle:
        return yaml.safe_load(handle)


def _is_finite_number(checker: Any, instance: Any) -> bool:
    """JSON Schema's ``number``, without NaN and the infinities (YAML's .nan / .inf)."""
    return jsonschema.Draft7Validator.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(
        instance
    )


def _defaults_filling_validator() -> type:
    """jsonschema Draft 7 validator that writes each property's ``default`` into the instance
    and whose ``number`` (and ``integer``) is finite.

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

    checker = base.TYPE_CHECKER.redefine("number", _is_finite_number)
    return jsonschema.validators.extend(
        base, {"properties": set_defaults}, type_checker=checker
    )


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    instance = error.instance
    if isinstance(instance, float) and not math.isfinite(instance):
        return f"{instance} is not allowed: every number must be finite (no .nan / .inf)"
    return error.message


def _non_finite(value: Any, prefix: str = "") -> Iterator[str]:
    """Key paths of NaN / infinite floats anywhere in ``value`` (also where no schema looks)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield prefix.rstrip(".") or "<top level>"
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _non_finite(child, f"{prefix}{key}.")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _non_finite(child, f"{prefix}{i}.")


def validate(config: Mapping[str, Any], source: str = "config") -> Config:
    """Return a completed deep copy of ``config``; raise ``ConfigError`` naming the bad key
    (all problems on one line, separated by "; ")."""
    completed = copy.deepcopy(dict(config))
    validator = _defaults_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(completed), key=lambda e: list(e.absolute_path))
    problems = [f"{_key_path(e)}: {_message(e)}" for e in errors]
    flagged = {_key_path(e) for e in errors}
    problems += [
        f"{key}: not a finite number (no .nan / .inf)"
        for key in _non_finite(completed)
        if key not in flagged
    ]
    if problems:
        raise ConfigError(f"invalid configuration in {source}: " + "; ".join(problems))
    return completed


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.shot=1"`` -> (["train", "shot"], 1); the value is parsed as YAML 1.2."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not key.strip():
        raise ConfigError(f"--set {text!r} has an empty key")
    if not all(k.strip() for k in keys) or any(k != k.strip() for k in keys):
        raise ConfigError(
            f"--set {text!r}: the key path {key.strip()!r} has an empty or blank part; write "
            f"section.key=value, e.g. train.shot=1"
        )
    try:
        return keys, yaml_load(raw)
    except yaml.YAMLError as exc:
        problem = yaml_problem(exc)
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {problem}") from None


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> Config:
    result = copy.deepcopy(dict(config))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {key!r} is not a section")
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
        raw = read_yaml(path)
        if raw is None:
            raise ConfigError(
                f"config file {source} is empty (or only comments): it would mean every default, "
                f"i.e. the full CUB-200-2011 benchmark; write the settings to change in it, or "
                f"leave --config out to mean the defaults"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {source} must hold a mapping, not {type(raw).__name__}")
    return validate(apply_overrides(raw, overrides), source=source)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (mode 0600, folders 0700) the mode an ordinary
    ``open`` / ``mkdir`` would: 0666 (0777) minus the umask, so the group can read results."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A fresh folder in ``parent`` (``tempfile.mkdtemp``) with the umask's usual mode."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    public_mode(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    A reader never sees a half-written file, and a failure leaves no temporary file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        public_mode(tmp)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write (e.g. ENOSPC) does not say which file
            raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system cannot (then the caller renames twice)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _restore_moved_aside(target: Path) -> None:
    """A writer killed between its two renames left ``target`` moved aside: put it back."""
    if target.exists():
        return
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], target)


def check_replaceable(path: str | os.PathLike[str], allowed: Iterable[str]) -> None:
    """Refuse to replace a folder holding anything but ``allowed`` names (call it before the
    work, so a wrong --out fails at once)."""
    target = Path(path)
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in set(allowed))
        if foreign:
            raise ConfigError(
                f"{target} holds files that this output does not write ({', '.join(foreign[:5])})"
                f": choose an empty folder or one of its own outputs"
            )


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], allowed: Iterable[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    The swap is one ``RENAME_EXCHANGE`` where Linux offers it (a reader, or a kill at any
    moment, sees the old folder complete or the new one, never neither); elsewhere the old
    folder is moved aside, the new one renamed in, and a folder left aside by a writer killed
    between the two is put back by the next writer. The old folder is removed after the swap;
    on failure the temporary folder is removed and ``path`` is left as it was. ``allowed``:
    the names an existing ``path`` may hold (anything else is refused, not deleted).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _restore_moved_aside(target)
    if allowed is not None:
        check_replaceable(target, allowed)
    tmp = make_temp_dir(target.parent, f".{target.name}.build-")
    try:
        yield tmp
        if not target.exists():
            os.replace(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the old folder
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Save the resolved configuration next to an output (atomically)."""
    atomic_write_text(path, yaml_dump(dict(config)))
