"""Prompt flow compatibility: `from promptflow.connections import CustomConnection`."""

from lmfoundry.flows.tools import CustomConnection

__all__ = ["CustomConnection"]
