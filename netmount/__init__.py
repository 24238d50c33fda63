"""netmount: a Hugging Face model repository as lazy, read-only local files.

    with netmount.mount("org/name") as path:
        model = AutoModelForCausalLM.from_pretrained(path)
"""

__all__ = ["Mount", "NetmountError", "mount", "unmount"]


def __getattr__(name):
    """Import lazily: ``import netmount.testhub`` must not pull in FUSE and the cache."""
    if name in ("Mount", "mount", "unmount"):
        from . import lifecycle

        return getattr(lifecycle, name)
    if name == "NetmountError":
        from .errors import NetmountError

        return NetmountError
    raise AttributeError(name)
