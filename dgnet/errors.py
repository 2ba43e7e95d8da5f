"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""


class DgnetError(Exception):
    """Base class: the message names the thing at fault and the rule it broke."""


class DatasetError(DgnetError):
    """A dataset folder, file, file name or list that does not follow its layout."""


class ConfigError(DgnetError):
    """A parameter or profile that is unknown or out of range."""
