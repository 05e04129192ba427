"""Python SDK for the lmfoundry management API."""

from lmfoundry.client.api import Client, chat_stream

__all__ = ["Client", "chat_stream"]
