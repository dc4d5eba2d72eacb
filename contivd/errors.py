"""The exceptions that contivd raises at its boundaries."""


class ContivError(Exception):
    """
    Base of every error contivd reports to a user or a caller.

    The message says what was wrong and, where it helps, what to do.
    """


class ConfigError(ContivError):
    """A command-line option or a combination of options is invalid."""


class ValidationError(ContivError):
    """A value (from a caller, the command line or etcd) is invalid.

    @ivar field: the name of the field that was wrong.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class FatalError(ContivError):
    """A condition under which the agent must stop instead of retrying."""


class NotFound(ContivError):
    """A named object does not exist."""


class Conflict(ContivError):
    """An object exists, or is held by someone else."""
