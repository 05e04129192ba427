"""Prompt flow compatibility: `from promptflow import tool, log_metric` in flow code."""

from lmfoundry.flows.tools import ToolProvider, log_metric, tool, trace

__all__ = ["ToolProvider", "log_metric", "tool", "trace"]
