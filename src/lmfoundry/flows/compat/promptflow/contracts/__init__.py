"""Prompt flow compatibility: `promptflow.contracts`."""
