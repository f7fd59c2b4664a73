"""Write docs/config_reference.md from the config models: every key with its type, default, range and description.

    .venv/bin/python scripts/config_reference.py           # rewrite the page
    .venv/bin/python scripts/config_reference.py --check   # exit 1 when the page is not current (tests/test_docs.py)

The models are the one source: types, defaults and ranges come from the pydantic fields, descriptions from
``Field(description=...)`` or the comment beside or above the field (``fleetloop_core.config.field_descriptions``).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel

from fleetloop_core.config import field_descriptions

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "config_reference.md"


def _sections() -> list[tuple[str, str, type[BaseModel]]]:
    """Return (file, section, model) for every config file section we validate."""
    from fleetloop_cloud.config import CloudConfig, CostModel
    from fleetloop_cloud.demo.config import DemoConfig
    from fleetloop_cloud.deploy import DeployConfig
    from fleetloop_cloud.review.settings import ReviewPageConfig
    from fleetloop_core.control_plane import ControlPlaneConfig
    from fleetloop_core.model_manager import ModelManagerConfig
    from fleetloop_models.modelbuild import BuildProfile
    from fleetloop_core.selection_config import SelectionConfig
    from fleetloop_core.upload_queue import QueueConfig
    from fleetloop_ros.settings import ModelManagerSettings, PerceptionSettings, SelectorSettings, UploaderSettings

    return [
        ("config/robot.yaml", "node perception (`ros__parameters`)", PerceptionSettings),
        ("config/robot.yaml", "node model_manager (`ros__parameters`)", ModelManagerSettings),
        ("config/robot.yaml", "node selector (`ros__parameters`)", SelectorSettings),
        ("config/robot.yaml", "node uploader (`ros__parameters`)", UploaderSettings),
        ("config/selection.yaml", "the whole file", SelectionConfig),
        ("config/upload_queue.yaml", "the whole file", QueueConfig),
        ("config/model_manager.yaml", "`model_manager`", ModelManagerConfig),
        ("config/model_manager.yaml", "`control_plane`", ControlPlaneConfig),
        ("config/models.yaml", "each profile", BuildProfile),
        ("config/cloud.yaml", "the whole file", CloudConfig),
        ("config/cost_model.yaml", "the whole file", CostModel),
        ("config/deploy.yaml", "the whole file", DeployConfig),
        ("config/review_page.yaml", "the whole file", ReviewPageConfig),
        ("config/demo.yaml", "the whole file", DemoConfig),
    ]


def _type_name(annotation: typing.Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, set, typing.Sequence):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Mapping):
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}" if args else "map"
    if origin is typing.Annotated:
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _range(metadata: list[typing.Any]) -> str:
    parts = []
    for item in metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None and isinstance(item, (annotated_types.BaseMetadata, annotated_types.Interval)):
                parts.append(f"{symbol} {value}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            parts.append(f"length >= {item.min_length}")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"length <= {item.max_length}")
    return ", ".join(parts)


def _default(value: typing.Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except TypeError:
        text = str(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """Return (key, type, default, range, description) per leaf of ``model`` (nested models flattened)."""
    out = []
    descriptions = field_descriptions(model)
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            out.append((key, f"section ({type(default).__name__})", "", "", descriptions[name]))
            out += rows(type(default), f"{key}.")
            continue
        if info.is_required():
            default_text = "required"
        else:
            default_text = _default(default.model_dump(mode="json") if isinstance(default, BaseModel) else default)
        out.append((key, _type_name(info.annotation), default_text, _range(list(info.metadata)), descriptions[name]))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """Return the page."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `scripts/config_reference.py` from the config models (the one source of every key's type,",
        "default and range); do not edit by hand. `tests/test_docs.py` fails when it is not current.",
        "What each file is for: [configuration.md](configuration.md).",
    ]
    for path, section, model in _sections():
        lines += ["", f"## `{path}`: {section}", "", f"Model: `{model.__module__}.{model.__name__}`.", ""]
        lines += ["| key | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
        for key, kind, default, bounds, description in rows(model):
            lines.append(f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(bounds)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/config_reference.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is not current: run .venv/bin/python scripts/config_reference.py")
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
