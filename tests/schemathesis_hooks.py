"""Schemathesis hooks (schemathesis.toml loads them): which models the generated paths name, and which server
errors the stack answers on purpose.

The OpenAPI documents leave model names free (the routes file decides them); here the path parameters that name a
model get an enum of real ones, so that most generated cases reach a backend instead of a 404. Negative cases still
name others. Environment:

    GATEWAY_ST_MODELS       models the paths name (default: those of examples/routes.local.yaml)
    GATEWAY_ST_DOWN_MODELS  models whose backend is down or does not load them: their 503 is expected (default none)
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure, ServerError

EXAMPLE_MODELS = "scale,affine,multi,mlp,mlp_torch,classifier,digits,digits_torch,digits_onnx"
# Path parameter -> the values generated paths use (positive cases; negative ones go outside them).
MODEL_PARAMETERS = ("model_name", "tf_model_name", "model")
VALUES: dict[str, list[Any]] = {"model_version": ["1", "2", "7"], "version": [1, 2, 7],
                                "label": ["stable", "canary", "gold"]}


def _names(variable: str, default: str = "") -> list[str]:
    return [name for name in os.environ.get(variable, default).split(",") if name]


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    values = {**VALUES, **{name: _names("GATEWAY_ST_MODELS", EXAMPLE_MODELS) for name in MODEL_PARAMETERS}}
    for path, item in raw_schema.get("paths", {}).items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else ():
                name = parameter.get("name")
                if parameter.get("in") != "path" or name not in values:
                    continue
                if name == "label" and method == "get" and not path.endswith("/metadata"):
                    continue  # a model's status ignores the label (as TF Serving's does): any label is valid there
                parameter["schema"] = {**parameter["schema"], "enum": values[name]}


@schemathesis.hook
def filter_failure(context: Any, failure: Failure, case: Any, response: Any) -> bool:
    """Drop the server errors the stack gives on purpose: 503 from a model that is down, 501 from :classify or
    :regress on a model TF Serving does not serve (both documented). Every other one is kept."""
    if not isinstance(failure, ServerError):
        return True
    status = response.status_code
    named = {str(case.path_parameters.get(p)) for p in MODEL_PARAMETERS} if case.path_parameters else set()
    if status == 503 and named & set(_names("GATEWAY_ST_DOWN_MODELS")):
        return False
    return not (status == 501 and case.operation.path.endswith((":classify", ":regress")))
