"""The exception types the CLI turns into one clean line and exit code 2.

Every layer raises :class:`MnistlabError` for problems the *user* can fix (bad input, missing
data or weights, corrupt files); anything else is a bug and keeps its traceback (shown with
``--debug``).
"""


class MnistlabError(Exception):
    """A user-facing error: the message is printed as one line, the process exits with 2."""


class CorruptFileError(MnistlabError):
    """A file the tool wrote no longer verifies (digest mismatch, truncation, foreign file).

    Caches catch it and recompute; finished results let it through with the ``--force``
    remedy attached by whoever knows which command made the file.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} is corrupt: {reason}")
        self.path, self.reason = path, reason


class AlreadyRunningError(MnistlabError):
    """Another process holds the run folder's lock."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Ray and Kubernetes send first), raised as an interrupt so that
    every place that saves finished work on Ctrl-C does so on SIGTERM too."""
