"""The base of every error whose message is already phrased for the user (fr and evaluation share it)."""


class UserInputError(ValueError):
    """Bad input from the user (a file, a setting, a record): the message names it and says what was expected.

    Command-line front ends print these as one line; anything else is a bug and keeps its traceback.
    """
