"""netmount: a Hugging Face model repository as lazy, read-only local files.

    with netmount.mount("org/name") as path:
        model = AutoModelForCausalLM.from_pretrained(path)
"""

__all__ = ["Mount", "NetmountError", "list_tensors", "mount", "read_stats", "unmount"]
# (warming the cache: ``netmount.warm.prefetch`` — ``netmount.prefetch`` is the daemon's module)

_HOMES = {"Mount": "lifecycle", "mount": "lifecycle", "unmount": "lifecycle",
          "read_stats": "stats", "list_tensors": "tensorlist"}


def __getattr__(name):
    """Import lazily: ``import netmount.testhub`` must not pull in FUSE and the cache."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    if name == "NetmountError":
        from .errors import NetmountError

        return NetmountError
    raise AttributeError(name)
