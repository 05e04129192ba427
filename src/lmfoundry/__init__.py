"""lmfoundry: a self-hosted platform for small language models."""

__version__ = "0.1.0"
