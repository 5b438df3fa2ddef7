"""The SDK's own pydantic models (`taesar_client.models`) accept exactly what the
service's OpenAPI document describes: the same schemas, field for field (names,
required-ness, types, enums, bounds, defaults), compared as JSON Schema with the
documentation-only keys (titles, descriptions, examples) left out. A field added to a
server schema and not to the SDK fails here."""

from __future__ import annotations

import copy
import inspect
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import taesar_client.models as sdk_models
from app.main import create_app
from tests.api_support import settings_for

REF = "#/components/schemas/{model}"
DOC_KEYS = frozenset({"title", "description", "examples", "example"})


@pytest.fixture(scope="module")
def server_schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # the document does not depend on the bundles loaded: an empty model folder will do
    settings = settings_for(tmp_path_factory.mktemp("no-models"))
    return create_app(settings).openapi()["components"]["schemas"]


def sdk_classes() -> list[type[BaseModel] | type[Enum]]:
    """The public models and enums defined in `taesar_client.models`."""
    return [
        obj
        for name, obj in vars(sdk_models).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel | Enum)
        and obj.__module__ == sdk_models.__name__
        and not name.startswith("_")
    ]


def sdk_schemas() -> dict[str, Any]:
    """JSON Schema of every SDK model as it validates input, named and referenced as in OpenAPI."""
    models = [(cls, "validation") for cls in sdk_classes() if issubclass(cls, BaseModel)]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    return top["$defs"]


def without_docs(node: Any) -> Any:
    """`node` without documentation-only keys and null defaults (FastAPI's document leaves
    those out; an optional field is told by "required" alone); field names are kept."""
    if isinstance(node, list):
        return [without_docs(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: without_docs(field) for name, field in value.items()}
        elif key not in DOC_KEYS and not (key == "default" and value is None):
            out[key] = without_docs(value)
    return out


def differences(server: dict[str, Any], sdk: dict[str, Any]) -> list[str]:
    """Every way the SDK's schemas differ from the server's, one readable line each."""
    found = [f"{n}: a server schema the SDK does not mirror" for n in sorted(server.keys() - sdk.keys())]
    found += [f"{n}: an SDK model the server does not have" for n in sorted(sdk.keys() - server.keys())]
    for name in sorted(server.keys() & sdk.keys()):
        found += _model_differences(name, without_docs(server[name]), without_docs(sdk[name]))
    return found


def _model_differences(name: str, server: dict[str, Any], sdk: dict[str, Any]) -> list[str]:
    s_props, k_props = server.get("properties", {}), sdk.get("properties", {})
    found = [f"{name}.{f}: on the server, not in the SDK" for f in sorted(s_props.keys() - k_props.keys())]
    found += [f"{name}.{f}: in the SDK, not on the server" for f in sorted(k_props.keys() - s_props.keys())]
    s_req, k_req = set(server.get("required", [])), set(sdk.get("required", []))
    found += [f"{name}.{f}: required on the server only" for f in sorted(s_req - k_req)]
    found += [f"{name}.{f}: required in the SDK only" for f in sorted(k_req - s_req)]
    for field in sorted(s_props.keys() & k_props.keys()):
        if s_props[field] != k_props[field]:
            found.append(f"{name}.{field}: server {s_props[field]} != SDK {k_props[field]}")
    rest = {"properties", "required"}
    s_rest = {k: v for k, v in server.items() if k not in rest}
    k_rest = {k: v for k, v in sdk.items() if k not in rest}
    if s_rest != k_rest:  # type, enum values, additionalProperties (extra="forbid")
        found.append(f"{name}: server {s_rest} != SDK {k_rest}")
    return found


def test_every_server_schema_is_mirrored_by_the_sdk_field_for_field(server_schemas: dict[str, Any]) -> None:
    assert len(server_schemas) >= 20
    assert differences(server_schemas, sdk_schemas()) == []


def test_the_sdk_exports_each_mirrored_model_under_the_server_name(server_schemas: dict[str, Any]) -> None:
    assert {cls.__name__ for cls in sdk_classes()} == set(server_schemas)
    assert set(sdk_models.__all__) >= set(server_schemas)


def test_a_field_added_on_the_server_only_is_reported(server_schemas: dict[str, Any]) -> None:
    server = copy.deepcopy(server_schemas)
    server["JobInfo"]["properties"]["priority"] = {"type": "integer"}
    server["SequenceIn"]["required"].append("user_id")
    server["JobStatus"]["enum"].append("paused")
    server["RegenerateOptions"]["properties"]["explain_top_k"]["maximum"] = 100
    found = differences(server, sdk_schemas())
    assert "JobInfo.priority: on the server, not in the SDK" in found
    assert "SequenceIn.user_id: required on the server only" in found
    assert any(line.startswith("JobStatus: server") for line in found)
    assert any(line.startswith("RegenerateOptions.explain_top_k: server") for line in found)
    server["Priority"] = {"type": "integer"}
    assert "Priority: a server schema the SDK does not mirror" in differences(server, sdk_schemas())


def test_the_documented_request_example_is_accepted_by_the_sdk_model(server_schemas: dict[str, Any]) -> None:
    examples = server_schemas["RegenerateRequest"]["examples"]
    assert examples
    for example in examples:
        sdk_models.RegenerateRequest.model_validate(example)
