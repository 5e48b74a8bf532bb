"""Errors a user can cause. The CLI prints these as one line and exits non-zero."""


class LightseekError(Exception):
    """A problem with the user's input: a file, a config value, a checkpoint."""


class ConfigError(LightseekError):
    """An unknown config key, a value of the wrong type, or an invalid combination."""


class DataError(LightseekError):
    """A corpus that is empty, unreadable or not UTF-8."""


class CheckpointError(LightseekError):
    """A checkpoint that is missing, truncated or does not match its config."""
