"""Prompt flow compatibility: `from promptflow import tool, log_metric` in flow code."""

from lmfoundry.flows.tools import log_metric, tool

__all__ = ["log_metric", "tool"]
