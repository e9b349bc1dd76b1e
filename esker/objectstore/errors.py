"""The object-storage errors every part raises: refused (a person can act on the message) or unavailable
(the gateway is down or too slow; retry later)."""

class StorageError(RuntimeError):
    """Object storage refused or failed an operation (the message says what and why)."""


class StorageUnavailable(StorageError):
    """The gateway is down, unreachable or too slow: nothing was granted. Retry later."""
