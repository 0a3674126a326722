"""User-facing errors: one line that names the bad thing."""


class InputError(ValueError):
    """Bad input from the user (config, prompts, videos, shards, credentials).

    The CLI prints ``str(err)`` as a single line and exits non-zero, without a traceback.
    """
