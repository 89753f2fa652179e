"""The one exception type users see: the CLI prints it as a single line, without a traceback."""


class PersonaGuardError(Exception):
    """A problem with the user's input or environment, stated in one line naming what to fix."""
