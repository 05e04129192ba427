"""Prompt flow compatibility: the exception classes flow code raises."""

from typing import Any


class PromptflowException(Exception):
    def __init__(self, message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(message or kwargs.get("message_format", ""), *args)


class UserErrorException(PromptflowException):
    pass


class SystemErrorException(PromptflowException):
    pass


class ValidationException(UserErrorException):
    pass


__all__ = [
    "PromptflowException",
    "SystemErrorException",
    "UserErrorException",
    "ValidationException",
]
