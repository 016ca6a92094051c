"""The error type for problems a user can fix: `bsn` prints its message as one line per problem."""


class UserError(ValueError):
    """Bad input, config or artifact; the message names the item and the fix."""
