"""ROS parameters from fleetloop_core config models: declared with descriptors, re-tunable live.

A node's settings are one pydantic model tree (``fleetloop_ros.settings``), built from the core
config models, so ROS parameter names are the core config keys joined by dots
(``cascade.escalate_above``, ``selection.budget.frames_per_hour``). :class:`LiveParameters`
declares one parameter per leaf with a ``ParameterDescriptor`` (type, range from the model's
``ge/gt/le/lt`` bounds, read-only where a change needs a restart, the allowed names of a
``Literal``), reads the values the node was started with, validates them through the model, and
registers an ``add_on_set_parameters_callback`` that validates a change the same way, rejects it
with the validation message as the reason, and hands a good one to the node as one new settings
object (applied atomically: the node swaps one reference).

Only rclpy API common to Humble, Jazzy and Kilted is used.
"""

from __future__ import annotations

import math
import threading
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Collection, Generic, Literal, Mapping, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.parameter import Parameter

from fleetloop_core.config import field_descriptions
from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_ros.settings import validate_settings

S = TypeVar("S", bound=BaseModel)

_INT_MAX = 2**63 - 1
# how an optional value that is None travels as a ROS parameter
_UNSET = {
    ParameterType.PARAMETER_DOUBLE: math.nan,
    ParameterType.PARAMETER_STRING: "",
    ParameterType.PARAMETER_INTEGER: -1,
}


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter derived from a leaf of a settings model."""

    name: str  # dotted path, e.g. "cascade.escalate_above"
    type: int  # rcl_interfaces ParameterType
    value: Any  # the value in ROS form
    description: str = ""
    read_only: bool = False
    bounds: tuple[float | None, float | None] = (None, None)  # inclusive for ROS; exactness is the model's
    choices: tuple[str, ...] = ()
    optional: bool = False  # None in the model (NaN / "" in ROS)

    def descriptor(self) -> ParameterDescriptor:
        """Return the ParameterDescriptor announced for this parameter."""
        text = self.description
        if self.choices:
            text = f"{text} (one of: {', '.join(self.choices)})".strip()
        if self.optional:
            unset = {ParameterType.PARAMETER_DOUBLE: "NaN", ParameterType.PARAMETER_INTEGER: "-1"}.get(
                self.type, "empty"
            )
            text = f"{text} ({unset} = unset)".strip()
        descriptor = ParameterDescriptor(name=self.name, type=self.type, description=text, read_only=self.read_only)
        low, high = self.bounds
        if (low is not None or high is not None) and not self.optional:
            if self.type == ParameterType.PARAMETER_DOUBLE:
                descriptor.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(low) if low is not None else -math.inf,
                        to_value=float(high) if high is not None else math.inf,
                        step=0.0,
                    )
                ]
            elif self.type == ParameterType.PARAMETER_INTEGER:
                descriptor.integer_range = [
                    IntegerRange(
                        from_value=int(math.ceil(low)) if low is not None else -_INT_MAX,
                        to_value=int(math.floor(high)) if high is not None else _INT_MAX,
                        step=0,
                    )
                ]
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        return descriptor


# ------------------------------------------------------------------------------ model <-> parameters
_SCALAR_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAY_TYPES = {
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
}


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    low = high = None
    for item in metadata:
        if isinstance(item, (annotated_types.Ge, annotated_types.Gt)):
            low = item.ge if isinstance(item, annotated_types.Ge) else item.gt
        elif isinstance(item, (annotated_types.Le, annotated_types.Lt)):
            high = item.le if isinstance(item, annotated_types.Le) else item.lt
        elif isinstance(item, annotated_types.Interval):
            low = item.ge if item.ge is not None else item.gt
            high = item.le if item.le is not None else item.lt
    return low, high


def _leaf(name: str, annotation: Any, value: Any, description: str, read_only: bool, metadata: list[Any]) -> ParamSpec:
    annotation, optional = _strip_optional(annotation)
    choices: tuple[str, ...] = ()
    if get_origin(annotation) is Literal:
        choices = tuple(str(c) for c in get_args(annotation))
        annotation = type(get_args(annotation)[0])
    if get_origin(annotation) in (list, tuple, typing.List, typing.Sequence, Collection):
        item = (get_args(annotation) or (str,))[0]
        if get_origin(item) is Literal:
            item = type(get_args(item)[0])
        if item not in _ARRAY_TYPES:
            raise ConfigError(f"parameter {name}: lists of {item} cannot be ROS parameters")
        return ParamSpec(name, _ARRAY_TYPES[item], list(value or []), description, read_only)
    if annotation not in _SCALAR_TYPES:
        raise ConfigError(f"parameter {name}: type {annotation} cannot be a ROS parameter")
    kind = _SCALAR_TYPES[annotation]
    if optional and kind == ParameterType.PARAMETER_BOOL:
        raise ConfigError(f"parameter {name}: an optional bool has no ROS form")
    if value is None:
        value = _UNSET[kind]
    elif kind == ParameterType.PARAMETER_DOUBLE:
        value = float(value)
    return ParamSpec(name, kind, value, description, read_only, _bounds(metadata), choices, optional)


def _listed(name: str, names: Collection[str]) -> bool:
    """Return True when ``name`` is in ``names`` or under one of them (``a.b`` is under ``a`` and ``a.``)."""
    return any(name == n.rstrip(".") or name.startswith(n if n.endswith(".") else f"{n}.") for n in names)


def parameter_specs(
    settings: BaseModel, read_only: Collection[str] = (), prefix: str = "", skip: Collection[str] = ()
) -> list[ParamSpec]:
    """Return one ParamSpec per leaf of ``settings`` (nested models and str-keyed dicts flattened).

    ``read_only`` holds dotted names (or prefixes ending in '.') that need a restart to change;
    ``skip`` the names (or prefixes) that are not parameters at all.
    """
    specs: list[ParamSpec] = []
    descriptions = field_descriptions(type(settings))
    for field_name, info in type(settings).model_fields.items():
        name = f"{prefix}{field_name}"
        if _listed(name, skip):
            continue
        value = getattr(settings, field_name)
        frozen = _listed(name, read_only)
        description = descriptions[field_name]
        if isinstance(value, BaseModel):
            specs.extend(parameter_specs(value, read_only, f"{name}.", skip))
        elif isinstance(value, Mapping):
            value_type = (get_args(_strip_optional(info.annotation)[0]) or (str, float))[1]
            for key, item in value.items():
                specs.append(_leaf(f"{name}.{key}", value_type, item, description, frozen, []))
        else:
            specs.append(_leaf(name, info.annotation, value, description, frozen, list(info.metadata)))
    return specs


def _is_unset(kind: int, value: Any) -> bool:
    if kind == ParameterType.PARAMETER_DOUBLE:
        return isinstance(value, float) and math.isnan(value)
    return value == _UNSET.get(kind)


def to_nested(values: Mapping[str, Any], specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Return a nested dict (model input) from dotted parameter values in ROS form."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is not None:
            if spec.optional and _is_unset(spec.type, value):
                value = None
            elif spec.type in (
                ParameterType.PARAMETER_DOUBLE_ARRAY,
                ParameterType.PARAMETER_INTEGER_ARRAY,
                ParameterType.PARAMETER_BOOL_ARRAY,
                ParameterType.PARAMETER_STRING_ARRAY,
            ):
                value = list(value) if value is not None else []  # rcl reads `[]` in a YAML file as unset
        target = nested
        *parents, leaf = name.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return nested


def _flat_dump(settings: BaseModel) -> dict[str, Any]:
    """Return {dotted name: value} of every leaf of ``settings`` (plain model form, dicts flattened)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping) and value and prefix:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}")
        else:
            flat[prefix] = value

    for key, value in settings.model_dump().items():
        walk(value, key)
    return flat


def to_ros_value(spec: ParamSpec, value: Any) -> Any:
    """Return ``value`` (plain YAML / model form) in the ROS form of ``spec`` (ints widened to float)."""
    if value is None:
        return _UNSET[spec.type]
    if spec.type == ParameterType.PARAMETER_DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type == ParameterType.PARAMETER_DOUBLE_ARRAY:
        return [float(v) for v in value]
    return value


# ------------------------------------------------------------------------------ the node side
class LiveParameters(Generic[S]):
    """Declares a node's settings as parameters and keeps them valid and applied.

    ``apply(new_settings)`` is called with a validated settings object whenever parameters change
    (and may raise FleetLoopError to refuse); ``current`` is the settings in force.
    """

    def __init__(
        self,
        node: Node,
        model: type[S],
        defaults: S,
        read_only: Collection[str],
        apply: Callable[[S], None] | None = None,
        skip: Collection[str] = (),
        extra_specs: Collection[ParamSpec] = (),
        normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self._node = node
        self._model = model
        self._apply = apply
        self._normalise = normalise or (lambda nested: nested)
        self._skipped = {name: value for name, value in _flat_dump(defaults).items() if _listed(name, skip)}
        self._lock = threading.Lock()
        self._source = f"parameters of node {node.get_fully_qualified_name()}"
        self.specs = {spec.name: spec for spec in parameter_specs(defaults, read_only, skip=skip)}
        self.specs.update({spec.name: spec for spec in extra_specs})
        values = {}
        for spec in self.specs.values():
            # rclpy types an empty list as a byte array: declare empty lists by their type alone
            initial = Parameter.Type(spec.type) if isinstance(spec.value, list) and not spec.value else spec.value
            try:
                parameter = node.declare_parameter(spec.name, initial, spec.descriptor())
            except InvalidParameterTypeException as exc:
                hint = (
                    "; write floats with a decimal point, e.g. 1.0"
                    if spec.type == ParameterType.PARAMETER_DOUBLE
                    else ""
                )
                raise ConfigError(f"{self._source}: {spec.name} has the wrong type ({exc}){hint}") from None
            values[spec.name] = parameter.value
        self._values = values
        self.current: S = self._validate(values)
        node.add_on_set_parameters_callback(self._on_set)

    def _validate(self, values: Mapping[str, Any]) -> S:
        nested = to_nested({**self._skipped, **values}, self.specs)
        return validate_settings(self._model, self._normalise(nested), self._source)

    def _on_set(self, parameters: list[Parameter]) -> SetParametersResult:
        ours = [p for p in parameters if p.name in self.specs]
        if not ours:
            return SetParametersResult(successful=True)
        with self._lock:
            values = dict(self._values)
            for parameter in ours:
                values[parameter.name] = parameter.value
            try:
                candidate = self._validate(values)
                if self._apply is not None:
                    self._apply(candidate)
            except FleetLoopError as exc:
                self._node.get_logger().warning(f"rejected {', '.join(p.name for p in ours)}: {exc}")
                return SetParametersResult(successful=False, reason=str(exc))
            self.current, self._values = candidate, values
        changes = ", ".join(f"{p.name}={p.value!r}" for p in ours)
        self._node.get_logger().info(f"parameters applied: {changes}")
        return SetParametersResult(successful=True)
