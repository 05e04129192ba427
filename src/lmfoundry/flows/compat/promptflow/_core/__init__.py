"""Prompt flow compatibility: its private `promptflow._core` package, which some flows import."""
