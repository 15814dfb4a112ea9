"""The one exception type for problems a user can fix (printed as one line by the CLI, exit code 2)."""


class UserError(Exception):
    """A problem with the user's input (recipe, files, paths, environment); ``str()`` is a complete one-liner."""
