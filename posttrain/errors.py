"""The one exception type for problems a user can fix (printed as one line by the CLI, exit code 2)."""


class UserError(Exception):
    """A problem with the user's input (recipe, files, paths, environment); ``str()`` is a complete one-liner."""


class RunStopped(Exception):
    """Training stopped itself on purpose (too many failed rewards, repeated non-finite steps) after saving a
    checkpoint; ``str()`` is a complete one-liner.  The CLI prints it and exits with code 3."""


class StrategyFailed(Exception):
    """A reweighting strategy raised inside one of its hooks; ``str()`` names the strategy and the hook in one line.
    The trainer skips the step, saves a checkpoint and stops (the CLI exits with code 3)."""
