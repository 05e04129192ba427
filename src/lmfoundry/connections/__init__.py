"""Connections: named configs and encrypted secrets that flows read."""
