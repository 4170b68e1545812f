"""Exceptions with messages meant for the person at the keyboard.

Every error a user can cause (bad file, bad prompt, missing weights) is one of these, so the CLI can print
the message and exit with code 2 instead of a traceback.
"""


class MedSAMAdapterError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class InputError(MedSAMAdapterError, ValueError):
    """An image, volume, label map or argument that cannot be used as given."""


class PromptError(InputError):
    """A prompt outside the image, a degenerate box, a prompt set with no positive evidence, ..."""


class WeightsError(MedSAMAdapterError):
    """Model weights missing, corrupt, or not the file the registry expects."""


class CacheError(MedSAMAdapterError):
    """A cache entry that cannot be read back; callers recompute instead of failing."""
