"""User-facing errors: one line that names the bad thing."""


class InputError(ValueError):
    """Bad input from the user (config, prompts, videos, shards, credentials), or a command refused
    (another command holds the run's lease).

    The CLI prints ``str(err)`` as a single line and exits 2, without a traceback.
    """


class StorageFailure(OSError):
    """Storage that failed under a valid config (no space left, credentials expired mid-run): one
    line naming the cause and the place. The CLI prints it and exits 1; the same command resumes
    once the cause is fixed."""
