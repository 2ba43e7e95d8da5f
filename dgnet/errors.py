"""Errors a user can act on. The CLI prints them without a traceback and exits with `exit_code`.

Exit codes, the same for every command and stage: 0 done, 1 a data rule failed (the data is at
fault: a validation rule, a manifest changed since validation, an image that cannot be read),
2 usage, configuration or environment (a bad flag or parameter, a missing or unwritable file, a
run folder in use, an unreachable store).
"""

EXIT_OK, EXIT_DATA_RULE, EXIT_USAGE = 0, 1, 2


class DgnetError(Exception):
    """Base class: the message names the thing at fault and the rule it broke."""

    exit_code = EXIT_USAGE


class DatasetError(DgnetError):
    """A dataset folder, file, file name or list that does not follow its layout."""


class DataRuleError(DatasetError):
    """Data that breaks a validation rule (named in the message): exit code 1."""

    exit_code = EXIT_DATA_RULE


class ConfigError(DgnetError):
    """A parameter or profile that is unknown or out of range."""


class OutputError(DgnetError):
    """A file or folder that cannot be written (permissions, a full disk, a symlink loop)."""


class ModelFileError(DgnetError):
    """A model file that is missing, unreadable, not a dgnet model, or of the wrong kind."""
