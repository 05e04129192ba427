"""Init arguments of flex flows: a class entry's `__init__` parameters and the checks of the
values a test, run or deployment gives them (`flex.py` reads the parameters)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.models import INPUT_TYPES, FlowInput, convert_input

MODEL_CONFIGS = ("AzureOpenAIModelConfiguration", "OpenAIModelConfiguration")


@dataclass(frozen=True)
class InitParam:
    """One `__init__` parameter of a class entry."""

    name: str
    kind: str  # "connection", a model configuration class name, an input type, or ANY
    has_default: bool
    default: Any = None


def refuse_key(configuration: dict[str, Any], where: str) -> None:
    """Init arguments are kept with runs and deployments, unencrypted: a model
    configuration's key goes into a connection instead (stricter than Prompt flow, which takes
    api_key in init.json)."""
    if configuration.get("api_key"):
        raise InvalidRequest(
            f"{where} gives an api_key; init arguments are kept with runs and deployments, so "
            "keys go into a connection: `lmfoundry connections create NAME --config "
            'endpoint=URL --secret key`, then give {"connection": "NAME", ...} instead.',
            param=where,
        )


def init_value(param: InitParam, value: Any) -> Any:
    if param.kind == "connection":
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"Init argument {param.name!r} takes a connection: give its name.",
                param=f"init.{param.name}",
            )
        return value
    if param.kind in MODEL_CONFIGS:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"Init argument {param.name!r} is a {param.kind}: give it as a JSON object, "
                'for example {"connection": "my_connection", "azure_deployment": "NAME"}.',
                param=f"init.{param.name}",
            )
        refuse_key(value, f"init.{param.name}")
        return value
    if param.kind in INPUT_TYPES:
        spec = FlowInput(param.name, param.kind, None, False, False, False)
        try:
            return convert_input(spec, value)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message.replace("Input", "Init argument", 1)) from exc
    return value
