"""``--hf-cache``: the Hub as a read-only Hugging Face hub cache, repos resolved on first lookup.

With ``HF_HUB_CACHE=<mount> HF_HUB_OFFLINE=1``, stock code loads by repo id from the mount.
What huggingface_hub (2.4) and transformers (5.24) read of a cache, from their source, and
so what this layout must answer (``namespace.py`` has the tree):

- ``try_to_load_from_cache`` (file_download.py): ``isdir(models--org--name)``, reads
  ``refs/{revision}`` (``isfile``, then ``f.read()``, unstripped: 40 bytes, no newline),
  ``isfile(.no_exist/{sha}/{file})``, then ``os.listdir(snapshots/)`` must name the sha and
  ``isfile(snapshots/{sha}/{file})``.  So ``snapshots/`` lists every commit held; a commit
  asked by sha and not held yet is found by lookup but not by this function.
- ``hf_hub_download`` (``_hf_hub_download_to_cache_dir``): a sha revision returns
  ``snapshots/{sha}/{file}`` if it exists, with no request.  Offline (or the Hub failing) it
  reads ``refs/{revision}`` and returns the snapshot path if it exists, else raises
  ``LocalEntryNotFoundError``.  Online it asks the Hub (HEAD) for commit and etag; if
  ``snapshots/{commit}/{file}`` exists it tries to update ``refs/{revision}`` (skipped when the
  content is already that commit; an ``OSError`` is swallowed) and returns it, writing
  nothing.  Otherwise it ``makedirs(blobs/)`` first: on a read-only cache that is
  ``OSError(EROFS)``, at once (transformers' ``cached_files`` re-raises EROFS as it is).
  A 404 on HEAD makes it touch ``.no_exist/{commit}/{file}`` unless that exists (an
  ``OSError`` there is logged at error level): answering ``.no_exist`` keeps that quiet.
- ``snapshot_download`` (_snapshot_download.py): online, ``repo_info`` for the commit, then
  ``trees/{sha}.json`` (2.x's listing cache) before ``list_repo_tree``; then
  ``hf_hub_download`` per file with the sha as revision (each answered by the snapshot
  path).  Offline: ``refs/{revision}``, ``exists(snapshots/{sha})``, and if
  ``trees/{sha}.json`` exists every listed file must be a file there; returns the folder.
- ``scan_cache_dir`` (utils/_cache_manager.py): every ``refs/**`` names a sha that
  ``snapshots/`` lists (else a warning), ``snapshots/*`` are folders, files are regular
  files or symlinks; ``.locks``, ``CACHEDIR.TAG`` and ``blobs`` at the top are skipped.
- ``blobs/``, ``.locks/``, ``CACHEDIR.TAG``: only ever written, never needed to read.

Modules: ``layout`` (names and the small files), ``catalog`` (what is known, bounded),
``flights`` (single-flight calls with bounded waits), ``resolution`` (the Hub's answers into
the catalog), ``namespace`` (``HfCacheNamespace``: ``lookup``/``children`` for fs.py).
"""

from netmount.mounting.hfcache.layout import RepoKey, parse_folder
from netmount.mounting.hfcache.namespace import HfCacheNamespace

__all__ = ["HfCacheNamespace", "RepoKey", "parse_folder"]
