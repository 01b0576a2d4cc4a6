"""A bounded cache of S3 shards on a node's disk: each shard crosses the network once per node, not
once per epoch.

A shard's first reader on the node downloads it whole into the cache folder (under a lock file of
its own: one process fetches, the others on the node wait and then read that copy), checks its size
and sha256 against the manifest, and renames it into place; later readers, in any process, open the
local copy. Files are named by their checksum, so a shard that changed on S3 is never served stale.
Past the limit, the least recently used shards go (a reader that has one open reads on: the file is
freed when it closes). While a reader reads one shard, a thread fetches the next few of its order.

A shard whose download does not match its manifest entry is not kept: the reader streams it from S3
as it would without the cache, and its damage is skipped and counted there. A download that fails
(the disk full, S3 refusing) is not the step's failure either: that shard streams from S3. A partial
download counts against the limit while its process lives, and is removed once it does not (a
reader killed mid-download).
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Optional

from . import storage

log = logging.getLogger(__name__)

SUFFIX = ".tar"
PARTIAL = ".partial-"  # a download in progress: <sha256>.tar.partial-<pid>


@dataclass(frozen=True)
class CacheSettings:
    """What a stream needs to open its process's cache (picklable: loader workers get a copy)."""
    folder: str
    limit_bytes: int
    ahead: int = 2  # shards fetched ahead of the one being read


@dataclass(frozen=True)
class CachedShard:
    url: str
    bytes: int
    sha256: str


class ShardCache:
    """One process's handle on a node's cache folder (shared by every process that opens it)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings
        os.makedirs(settings.folder, exist_ok=True)
        self.fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskx-shard-cache")
        self.fetching: dict[str, Future] = {}
        self.lock = threading.Lock()

    def open(self, shard: CachedShard, upcoming: list[CachedShard] = ()) -> IO[bytes]:
        """The shard's bytes: the local copy (fetched now if it is not there yet), or the S3 stream
        when it cannot be kept. Starts fetching the first `ahead` of `upcoming`."""
        for following in list(upcoming)[:self.settings.ahead]:
            self._fetch_in_background(following)
        path = self._wait_for(shard)
        try:
            return open(path, "rb") if path else storage.open_read(shard.url)
        except FileNotFoundError:  # evicted by another process between its fetch and this open
            return storage.open_read(shard.url)

    def path_of(self, shard: CachedShard) -> str:
        return os.path.join(self.settings.folder, shard.sha256 + SUFFIX)

    def _fetch_in_background(self, shard: CachedShard) -> None:
        with self.lock:
            if shard.sha256 not in self.fetching and not os.path.exists(self.path_of(shard)):
                self.fetching[shard.sha256] = self.fetcher.submit(self.fetch, shard)

    def _wait_for(self, shard: CachedShard) -> Optional[str]:
        with self.lock:
            pending = self.fetching.pop(shard.sha256, None)
        if pending is not None:
            pending.exception()  # a failed fetch ahead was logged by fetch: this shard tries once more
        return self.fetch(shard)

    def fetch(self, shard: CachedShard) -> Optional[str]:
        """The local path of the shard, downloaded unless some process on the node already has it; None
        where it is not kept (larger than the cache, or not what its manifest says)."""
        path = self.path_of(shard)
        if shard.bytes > self.settings.limit_bytes:
            return None
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other processes wait here for the one fetching
            if os.path.exists(path):
                os.utime(path)  # used now: the last to go
                return path
            partial = f"{path}{PARTIAL}{os.getpid()}"
            try:
                self.evict(room_for=shard.bytes)
                storage.download(shard.url, partial)
                size, digest = os.path.getsize(partial), storage.file_sha256(partial)
                if (size, digest) != (shard.bytes, shard.sha256):
                    log.warning("shard %s: downloaded %d bytes with sha256 %s, its manifest says %d and %s; not "
                                "cached, read from S3 instead", shard.url, size, digest[:12], shard.bytes,
                                shard.sha256[:12])
                    return None
                os.replace(partial, path)
            except Exception as exc:  # the disk full, S3 refusing: the reader streams this shard instead
                log.warning("shard %s: not cached (%s: %s); read from S3 instead", shard.url, type(exc).__name__, exc)
                return None
            finally:
                try:
                    os.remove(partial)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # whatever stood there (it failed the download): the next evict tries again
                    log.warning("shard cache: %s not removed (%s)", partial, exc)
        return path

    def evict(self, room_for: int) -> None:
        """Remove the least recently used shards until `room_for` more bytes fit under the limit."""
        entries, downloading = [], 0
        for entry in os.scandir(self.settings.folder):
            try:
                if entry.name.endswith(SUFFIX):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
                elif PARTIAL in entry.name:
                    if process_alive(entry.name.rsplit(PARTIAL, 1)[1]):
                        downloading += entry.stat().st_size
                    else:  # its reader died mid-download
                        os.remove(entry.path)
            except FileNotFoundError:  # another process evicted or finished it just now
                continue
        total = downloading + sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total + room_for <= self.settings.limit_bytes:
                break
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            total -= size


def process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_CACHES: dict[tuple[int, CacheSettings], ShardCache] = {}


def cache_for(settings: CacheSettings) -> ShardCache:
    """This process's handle (a loader worker forked from another gets its own, with its own thread)."""
    key = (os.getpid(), settings)
    if key not in _CACHES:
        _CACHES[key] = ShardCache(settings)
    return _CACHES[key]
