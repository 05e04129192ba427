"""Prompt flow compatibility: `from promptflow.contracts.multimedia import Image` in flow code.
The executor gives tools these very classes (flows/images.py)."""

from lmfoundry.flows.images import Image, PFBytes

__all__ = ["Image", "PFBytes"]
