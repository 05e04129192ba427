"""Prompt flow compatibility: `from promptflow.core import tool, log_metric`."""

from lmfoundry.flows.tools import log_metric, tool

__all__ = ["log_metric", "tool"]
