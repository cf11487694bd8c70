"""The CRD (the single source of the API) and its pydantic mirror agree, and the CRD documents
itself: every field described, printer columns and scale paths pointing at real fields."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from slmpack.api import v1alpha1 as api

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "slmpack.dev_slmdeployments.yaml"
CRD: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
(VERSION,) = CRD["spec"]["versions"]
SCHEMA: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]

#: JSON-schema types and the Python types a pydantic field must accept for them.
_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "array": tuple,
    "object": dict,
}


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every named property, array items included as `path[]`."""
    for name, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        yield here, prop
        yield from _walk(prop, here)
        if "items" in prop:
            yield from _walk(prop["items"], f"{here}[]")


def _is_free_form(schema: dict[str, Any]) -> bool:
    """Objects whose keys are data, not fields: preserved unknown fields or string maps."""
    return bool(schema.get("x-kubernetes-preserve-unknown-fields")) or (
        "additionalProperties" in schema and "properties" not in schema
    )


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (X | None), or the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_of(field: FieldInfo) -> type[BaseModel]:
    """The nested model a field holds, directly or as the items of a tuple."""
    for member in _members(field.annotation):
        if typing.get_origin(member) is tuple:
            member = typing.get_args(member)[0]
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    raise AssertionError(f"{field.annotation} holds no pydantic model")


def _python_type(annotation: Any) -> Any:
    """tuple for tuple[str, ...], str for a Literal of strings, else the annotation."""
    if typing.get_origin(annotation) is Literal:
        (kind,) = {type(v) for v in typing.get_args(annotation)}
        return kind
    return typing.get_origin(annotation) or annotation


def _by_alias(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _pairs() -> Iterator[tuple[str, dict[str, Any], type[BaseModel]]]:
    """(path, CRD object schema, pydantic model) for every structured object of the API."""
    todo: list[tuple[str, dict[str, Any], type[BaseModel]]] = [
        ("spec", SCHEMA["properties"]["spec"], api.SLMDeploymentSpec),
        ("status", SCHEMA["properties"]["status"], api.SLMDeploymentStatus),
    ]
    while todo:
        path, schema, model = todo.pop()
        yield path, schema, model
        fields = _by_alias(model)
        for name, prop in (schema.get("properties") or {}).items():
            target = prop["items"] if prop.get("type") == "array" else prop
            if target.get("type") == "object" and not _is_free_form(target) and name in fields:
                todo.append((f"{path}.{name}", target, _model_of(fields[name])))


PAIRS = list(_pairs())
FIELDS = [
    pytest.param(name, prop, _by_alias(model)[name], id=f"{path}.{name}")
    for path, schema, model in PAIRS
    for name, prop in (schema.get("properties") or {}).items()
    if name in _by_alias(model)
]


def test_every_structured_object_is_mirrored() -> None:
    # spec, model, config, configMapRef, engine, env[], resources, hfTokenSecretRef, gpu,
    # autotune, slo, workload; status, conditions[], plan, predicted, autotune, target.
    assert len(PAIRS) == 18


@pytest.mark.parametrize(("path", "schema", "model"), [pytest.param(*p, id=p[0]) for p in PAIRS])
def test_crd_properties_and_model_fields_match(
    path: str, schema: dict[str, Any], model: type[BaseModel]
) -> None:
    in_crd = set(schema.get("properties") or {})
    in_model = set(_by_alias(model))

    assert in_crd - in_model == set(), f"{path}: in the CRD but not in {model.__name__}"
    assert in_model - in_crd == set(), f"{path}: in {model.__name__} but not in the CRD"


@pytest.mark.parametrize(("name", "prop", "field"), FIELDS)
def test_field_types_match(name: str, prop: dict[str, Any], field: FieldInfo) -> None:
    if "type" not in prop:  # int-or-string quantities
        return
    accepted = {_python_type(m) for m in _members(field.annotation) if m is not type(None)}
    if prop["type"] == "object" and not _is_free_form(prop):
        assert any(isinstance(a, type) and issubclass(a, BaseModel) for a in accepted)
    else:
        assert _PY_TYPES[prop["type"]] in accepted, f"{name}: {field.annotation}"


@pytest.mark.parametrize(("name", "prop", "field"), FIELDS)
def test_enums_equal_the_literal_values(name: str, prop: dict[str, Any], field: FieldInfo) -> None:
    literals = [m for m in _members(field.annotation) if typing.get_origin(m) is Literal]
    if "enum" in prop:
        assert len(literals) == 1, f"{name} has an enum in the CRD but no Literal"
        assert set(typing.get_args(literals[0])) == set(prop["enum"])
    else:
        assert literals == [], f"{name} is a Literal but the CRD has no enum"


@pytest.mark.parametrize(("name", "prop", "field"), FIELDS)
def test_defaults_equal_the_model_defaults(
    name: str, prop: dict[str, Any], field: FieldInfo
) -> None:
    if "default" in prop:
        assert field.default == prop["default"], name
    elif field.is_required():
        pass
    elif field.default_factory is None:
        # No CRD default: the model may only default to "unset".
        assert field.default in (None, ()), f"{name} defaults to {field.default!r}"


def test_required_fields_are_required_in_the_model() -> None:
    for path, schema, model in PAIRS:
        fields = _by_alias(model)
        for name in schema.get("required") or []:
            # Status fields are required only in the objects slmpack writes itself.
            if not path.startswith("status"):
                assert fields[name].is_required(), f"{path}.{name}"


def test_enum_sanity_a_known_literal_is_found() -> None:
    # Guards the walker: without it, a walker that found no Literals would pass every check.
    sharing = [f for n, _, f in (p.values for p in FIELDS) if n == "sharing"]
    assert sharing
    (literal,) = [m for m in _members(sharing[0].annotation) if typing.get_origin(m) is Literal]
    assert "Packed" in typing.get_args(literal)


@pytest.mark.parametrize(("path", "prop"), list(_walk(SCHEMA)))
def test_every_property_is_described(path: str, prop: dict[str, Any]) -> None:
    if path == "metadata":
        return  # the apiserver documents ObjectMeta itself
    assert str(prop.get("description", "")).strip(), f"{path} has no description"


def test_the_whole_schema_is_described() -> None:
    assert SCHEMA["description"].strip()


# --- printer columns and scale ------------------------------------------------------------


def _resolve(json_path: str) -> dict[str, Any]:
    """The schema a `.a.b.c` jsonPath points at; fails if any step does not exist."""
    schema = SCHEMA
    for step in json_path.lstrip(".").split("."):
        props = schema.get("properties") or {}
        assert step in props, f"{json_path}: no {step!r}"
        schema = props[step]
    return schema


def _resolve_model(json_path: str) -> FieldInfo:
    _, top, *rest = json_path.split(".")
    model: type[BaseModel] = {"spec": api.SLMDeploymentSpec, "status": api.SLMDeploymentStatus}[top]
    field: FieldInfo | None = None
    for step in rest:
        if field is not None:
            model = _model_of(field)
        field = _by_alias(model)[step]
    assert field is not None
    return field


COLUMNS = {c["name"].upper(): c for c in VERSION["additionalPrinterColumns"]}


@pytest.mark.parametrize("name", ["MODEL", "MODE", "PER-GPU", "GPUS", "READY"])
def test_printer_columns_point_at_status_fields(name: str) -> None:
    column = COLUMNS[name]
    assert column["jsonPath"].startswith(".status.")
    schema = _resolve(column["jsonPath"])

    assert schema["type"] == column["type"]
    _resolve_model(column["jsonPath"])  # and the operator writes that field


def test_age_column_is_the_creation_timestamp() -> None:
    assert COLUMNS["AGE"]["jsonPath"] == ".metadata.creationTimestamp"
    assert COLUMNS["AGE"]["type"] == "date"


def test_wide_columns_point_at_real_fields() -> None:
    for column in VERSION["additionalPrinterColumns"]:
        if column["jsonPath"].startswith((".status.", ".spec.")):
            assert _resolve(column["jsonPath"])["type"] == column["type"]


def test_scale_subresource_paths_exist() -> None:
    scale = VERSION["subresources"]["scale"]

    assert _resolve(scale["specReplicasPath"])["type"] == "integer"
    assert _resolve(scale["statusReplicasPath"])["type"] == "integer"
    assert _resolve(scale["labelSelectorPath"])["type"] == "string"
    assert _resolve_model(scale["specReplicasPath"]).annotation == int | None
    assert _resolve_model(scale["labelSelectorPath"]).annotation == str | None
    assert "status" in VERSION["subresources"]


# --- CEL messages -------------------------------------------------------------------------


def _rules() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, prop in [("spec", SCHEMA["properties"]["spec"]), *_walk(SCHEMA)]:
        for rule in prop.get("x-kubernetes-validations") or []:
            yield path, rule


RULES = list(dict.fromkeys((p, r["rule"], r["message"]) for p, r in _rules()))


def test_rules_were_found() -> None:
    # spec (2), model.uri, model.config, engine.args, gpu (3), gpu.migProfile, autotune,
    # slo.ttftP99, slo.itlP99.
    assert len(RULES) == 12


@pytest.mark.parametrize(("path", "rule", "message"), RULES)
def test_each_rule_message_names_its_fields(path: str, rule: str, message: str) -> None:
    # Messages are for users, so they name fields as the user writes them (gpu.sharing),
    # leaving out the leading spec. where the rule sits below it.
    where = path.removeprefix("spec.")
    # Fields read as self.<name>; self.matches(...) and the like are methods, not fields.
    fields = sorted(set(re.findall(r"self\.([A-Za-z]+)(?![A-Za-z]*\()", rule)))
    if fields:  # a rule on an object: every field it reads is named
        for field in fields:
            assert f"{where}.{field}" in message, f"{path}: {rule!r} vs {message!r}"
    else:  # a rule on the field itself
        assert where in message, f"{path}: {rule!r} vs {message!r}"
