"""The exception the command-line tools turn into a one-line message."""


class ToolError(Exception):
    """Bad use of a tool: a wrong argument, file or config entry.

    The tools print it as ``prog: error: message`` and exit with status 2,
    without a traceback; the message says what is wrong and how to fix it.
    """
