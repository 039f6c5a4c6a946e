"""The one error type cnnpipe raises for bad input: its message names the problem and the fix."""


class CnnpipeError(Exception):
    """Bad params, data or requests. Stages print the message as one line and exit 2."""
