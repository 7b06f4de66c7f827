"""fr's user errors that layers on both sides of the config raise (the config itself, checkpoints, strategies):
here, below every module that raises them, so that none has to import the config module for its error class."""

from evaluation.errors import UserInputError


class ConfigError(UserInputError):
    """A configuration problem, phrased as one line naming the key or file."""


class CheckpointError(UserInputError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""
