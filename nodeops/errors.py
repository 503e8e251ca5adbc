"""The one base of every error nodeops raises: its message is meant for the person reading the job.

The job runner records any NodeOpError as the job's error, in one line and
without a traceback, so each subclass's message must say what went wrong
where (the node, the app, the file) and, when it can, what to do about it.
"""


class NodeOpError(Exception):
    """Something a host or an input refused; str(exc) is the sentence a person reads."""
