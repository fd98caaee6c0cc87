"""The one base class for errors that end a command with a message and exit status 1, no traceback.

It lives in contract/ because every package (contract, data, train) imports contract and none of the others
need each other for this.
"""


class UserError(Exception):
    """Something the user can fix (a flag, a file, the data); the message names what and where."""
