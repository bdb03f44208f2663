"""The two errors a user can act on; every script prints their message and exits with status 2
(cxr/cli.py), without a traceback."""


class ConfigError(ValueError):
    """A bad command-line override or config value; the message says which and why."""


class PipelineError(RuntimeError):
    """A problem the user can fix (bad input, missing stage output); the message says how."""
