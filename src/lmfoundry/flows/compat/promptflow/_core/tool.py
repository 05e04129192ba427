"""Prompt flow compatibility: `from promptflow._core.tool import tool, ToolProvider`."""

from lmfoundry.flows.tools import ToolProvider, tool

__all__ = ["ToolProvider", "tool"]
