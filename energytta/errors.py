"""User-facing errors: one line that names the problem and what to do.

CLIs catch `UserError` and print `error: <message>` with exit code 2, never a traceback.
"""


class UserError(Exception):
    """Bad input from the user (file, flag, config); the message is shown as is."""
