"""Config loading: YAML files validated into pydantic models, with errors naming file, key and value.

Every concern has one model tree (``SelectionConfig``, ``CascadeConfig``, ...) deriving from
:class:`ConfigModel`; :func:`load_config` reads a file (optionally one section of it) into it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fleetloop_core.errors import ConfigError

T = TypeVar("T", bound="ConfigModel")


class ConfigModel(BaseModel):
    """Base of every config tree: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def field_descriptions(model: type[BaseModel]) -> dict[str, str]:
    """Return {field name: description} of a config model (its classes in MRO order, nearest first).

    A ``Field(description=...)`` wins; otherwise the comment on the field's lines, or the comment lines
    right above it (how our config models document their fields). Used for the ROS parameter
    descriptors and the generated configuration reference.
    """
    found: dict[str, str] = {}
    for cls in model.__mro__:
        if cls is BaseModel or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        for name, text in _comments_of(cls).items():
            found.setdefault(name, text)
    for name, info in model.model_fields.items():
        if info.description:
            found[name] = info.description
    return {name: found.get(name, "") for name in model.model_fields}


@functools.lru_cache(maxsize=None)
def _comments_of(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): no descriptions
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        beside = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        out[node.target.id] = " ".join(above + beside)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Return the mapping at the top of a YAML file; ConfigError if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    return data


def _format_errors(source: str, prefix: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in (*([prefix] if prefix else []), *err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key}")
            continue
        if err["type"] == "missing":
            lines.append(f"{source}: missing key {key}")
            continue
        message = err["msg"]
        lines.append(f"{source}: {key}: {message} (got {err.get('input')!r})")
    return "; ".join(lines)


def validate(model: type[T], data: Mapping[str, Any], source: str = "<config>", prefix: str = "") -> T:
    """Return ``model`` built from ``data``; ConfigError naming source, key and value on failure."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, prefix, exc)) from None


def load_config(model: type[T], path: str | Path, section: str | None = None) -> T:
    """Return ``model`` loaded from a YAML file, or from one top-level section of it."""
    data = read_yaml(path)
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: missing section {section}")
        data = data[section]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: section {section} must be a mapping (got {type(data).__name__})")
    return validate(model, data, source=str(path), prefix=section or "")


def repo_root() -> Path:
    """Return the checkout root when running from the source tree (config/ lives there)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "config").is_dir() and (parent / "ros2_ws").is_dir():
            return parent
    return Path.cwd()


def default_config_path(name: str) -> Path:
    """Return the path of a shipped config file (``config/<name>``)."""
    return repo_root() / "config" / name
