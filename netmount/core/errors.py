"""Typed errors with one-line messages.

The CLI prints ``str(error)`` and exits non-zero; Python users catch the class.  Every
message says what went wrong and, where there is one, what to do about it.
"""


class NetmountError(Exception):
    """Base class: a known failure with a message fit for one line on stderr."""

    exit_code = 1


class BadInput(NetmountError):
    """Malformed argument: repo id, size, block size, mountpoint."""

    exit_code = 2


class RepoNotFound(NetmountError):
    pass


class RevisionNotFound(NetmountError):
    pass


class GatedRepo(NetmountError):
    pass


class AuthFailed(NetmountError):
    pass


class EndpointUnreachable(NetmountError):
    pass


class UnsafeListing(NetmountError):
    """The server listed a path that could escape the mountpoint."""


class MountpointError(NetmountError):
    pass


class FuseUnavailable(NetmountError):
    pass


class FetchError(NetmountError):
    """A range could not be fetched correctly after bounded retries (maps to EIO)."""


class NotAMount(NetmountError):
    pass
