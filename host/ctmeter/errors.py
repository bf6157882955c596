# SPDX-License-Identifier: MIT
"""The toolkit's error type: every command raises CommandError; cli.main prints it once."""


class CommandError(Exception):
    """A command failed in a way the user can act on. `hint` says what to try."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self):
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text
