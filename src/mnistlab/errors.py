"""The one exception type the CLI turns into a clean one-line error and exit code 2.

Every layer raises :class:`MnistlabError` for problems the *user* can fix (bad input, missing
data or weights, corrupt files); anything else is a bug and keeps its traceback.
"""


class MnistlabError(Exception):
    """A user-facing error: the message is printed as one line, the process exits with 2."""
