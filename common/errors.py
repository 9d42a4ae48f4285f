"""The one error type that reaches the user as a single line and exit status 2."""


class UserError(Exception):
    """Bad input (config, arguments, files) or a request the machine cannot serve.

    The CLI prints `xfw: error: <message>` and exits with status 2, no traceback."""
