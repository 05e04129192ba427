"""Prompt flow compatibility: `from promptflow.core import tool, log_metric, ToolProvider`,
and `Prompty` with the model configurations (flows/prompty_run.py)."""

from lmfoundry.flows.prompty_run import (
    AzureOpenAIModelConfiguration,
    OpenAIModelConfiguration,
    Prompty,
)
from lmfoundry.flows.tools import ToolProvider, log_metric, tool

__all__ = [
    "AzureOpenAIModelConfiguration",
    "OpenAIModelConfiguration",
    "Prompty",
    "ToolProvider",
    "log_metric",
    "tool",
]
