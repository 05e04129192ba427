"""Prompt flow compatibility: `from promptflow.connections import CustomConnection` and the
other connection classes tools annotate their parameters with. Each is a connection's configs
and secrets, read as `connection.key` or `connection["key"]`."""

from lmfoundry.flows.tools import CustomConnection


class CustomStrongTypeConnection(CustomConnection):
    """A custom connection with declared fields (Prompt flow's strong-type connections)."""


class AzureOpenAIConnection(CustomConnection):
    """Configs `api_base`, `api_version`, `api_type`; secret `api_key`."""


class OpenAIConnection(CustomConnection):
    """Config `base_url`, `organization`; secret `api_key`."""


class ServerlessConnection(CustomConnection):
    """Config `api_base`; secret `api_key` (a serverless API deployment)."""


__all__ = [
    "AzureOpenAIConnection",
    "CustomConnection",
    "CustomStrongTypeConnection",
    "OpenAIConnection",
    "ServerlessConnection",
]
