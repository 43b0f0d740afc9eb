class SpotitError(Exception):
    """A problem with the user's input or environment, reported as one line, never a traceback."""
