"""User-facing errors.

Anything a user can cause (a bad file, a missing column, a wrong flag) is raised as a
:class:`PumaMedError` subclass with a message written for that user. The CLI prints it as one
line and exits non-zero; pages show it with ``st.error``. Everything else is a bug.
"""


class PumaMedError(Exception):
    """Base class of errors whose message is meant for the user."""


class DataError(PumaMedError):
    """A dataset or table is missing, malformed or inconsistent."""


class MissingDataError(DataError):
    """A file the data directory should hold is not there (as opposed to one that is there but
    broken): pages say where to put it; other data errors show their own message."""


class InputError(PumaMedError):
    """An uploaded file or a user-supplied value cannot be used."""


class CheckpointError(PumaMedError):
    """A model checkpoint is missing, unsafe, or does not fit the model."""
