"""Prompt flow compatibility: the string types tools annotate their parameters with."""


class Secret(str):
    """A string that is a secret."""


class PromptTemplate(str):
    """A string that is a prompt template."""


class FilePath(str):
    """A string that is a path to a file."""


__all__ = ["FilePath", "PromptTemplate", "Secret"]
