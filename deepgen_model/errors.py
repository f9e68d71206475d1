"""Errors the engine raises. Every message names the offending input/file and the fix."""


class DeepGenError(Exception):
    """Base class: a user-facing problem with inputs, files or settings."""


class DeepGenInputError(DeepGenError, ValueError):
    """Bad argument (size, prompt, image, steps...)."""


class DeepGenLoadError(DeepGenError, RuntimeError):
    """A model file/folder is missing, unreadable, unsafe, or has missing/mis-shaped tensors."""
