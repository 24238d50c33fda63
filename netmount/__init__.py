"""netmount: a Hugging Face model (or dataset) repository as lazy, read-only local files.

    with netmount.mount("org/name") as path:
        model = AutoModelForCausalLM.from_pretrained(path)

    netmount.mount("datasets/org/name")  # or netmount.mount("org/name", repo_type="dataset")

    with netmount.mount_hf_cache("/mnt/hf"):  # the Hub as a Hugging Face cache: HF_HUB_CACHE=/mnt/hf
        ...
"""

__all__ = ["Mount", "NetmountError", "list_tensors", "mount", "mount_hf_cache", "read_stats", "unmount", "verify"]
# (warming the cache: ``netmount.commands.warm.prefetch`` — ``netmount.read.prefetch`` is the daemon's module)

_HOMES = {"Mount": "mounting.lifecycle", "mount": "mounting.lifecycle", "mount_hf_cache": "mounting.lifecycle",
          "unmount": "mounting.lifecycle",
          "read_stats": "mounting.stats", "list_tensors": "commands.tensorlist",
          "verify": "commands.verify"}


def __getattr__(name):
    """Import lazily: ``import netmount.dev.testhub`` must not pull in FUSE and the cache."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    if name == "NetmountError":
        from netmount.core.errors import NetmountError

        return NetmountError
    raise AttributeError(name)
