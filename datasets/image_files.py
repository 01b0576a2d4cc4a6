"""Where a release's JPEGs are: folders and zip archives as they are distributed, local or on S3.

`--images` names one or more of:
- a folder (or `s3://bucket/prefix`), laid out as the release unzips: COCO's `train2017/`, VG's
  `VG_100K/` and `VG_100K_2/` side by side, or every image in one flat folder;
- a zip archive as downloaded (`train2017.zip`, VG's `images.zip` + `images2.zip`), local or
  `s3://.../images.zip`, read in place (ranged reads on S3): nobody has to unzip ~35 GB first.

`ImageFiles.find(names)` tries each candidate name (`VG_100K_2/1.jpg`, then `1.jpg`) in each
location and returns a reference that `read_image_file` reads in any process: a path, an s3:// url
or `zip://MEMBER::ARCHIVE` (fsspec's notation for a member of an archive).
"""
from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import zipfile
import zlib
from typing import Optional, Sequence

from . import storage
from .s3_objects import StorageError, s3_error, split_s3

log = logging.getLogger(__name__)

ZIP_PREFIX = "zip://"
ZIP_SEPARATOR = "::"
# An S3 range read fetches at least this much: a zip member's header and the start of its data
# come in one request.
S3_MIN_RANGE = 64 * 1024


def is_archive(location: str) -> bool:
    return location.lower().endswith(".zip")


class ImageFiles:
    """The image locations of one conversion, indexed once: archives' member lists and S3 folders'
    key lists are read here; local folders are asked per image."""

    def __init__(self, locations: Sequence[str]):
        if not locations:
            raise ValueError("--images: name at least one folder or zip archive")
        self.locations = [location.rstrip("/") for location in locations]
        # archive -> {member path and member basename: member path}
        self._members: dict[str, dict[str, str]] = {}
        self._s3_keys: dict[str, set[str]] = {}
        for location in self.locations:
            if is_archive(location):
                self._members[location] = _index_members(open_archive(location).namelist())
            elif storage.is_s3(location):
                self._s3_keys[location] = storage.list_keys(location)
                if not self._s3_keys[location]:
                    raise FileNotFoundError(f"--images {location}: no objects under that prefix")
            elif not os.path.isdir(location):
                raise FileNotFoundError(f"--images {location}: no such folder or zip archive")

    def find(self, names: Sequence[str]) -> Optional[str]:
        """A readable reference to the first of `names` (relative, '/'-separated) found, else None."""
        for location in self.locations:
            for name in names:
                if location in self._members:
                    member = self._members[location].get(name)
                    if member is not None:
                        return f"{ZIP_PREFIX}{member}{ZIP_SEPARATOR}{location}"
                elif location in self._s3_keys:
                    if name in self._s3_keys[location]:
                        return f"{location}/{name}"
                elif os.path.isfile(os.path.join(location, name)):
                    return os.path.join(location, name)
        return None

    def where(self, names: Sequence[str]) -> str:
        """Where `find` looked, for the message of an image it did not find."""
        looked = []
        for location in self.locations:
            if location in self._members:
                looked.append(f"{location} (members {' or '.join(names)})")
            else:
                looked += [posixpath.join(location, name) for name in names]
        return ", ".join(looked)


def _index_members(names: list[str]) -> dict[str, str]:
    # By basename too: COCO's train2017.zip holds train2017/X.jpg where the JSON says X.jpg.
    index = {posixpath.basename(name): name for name in names if not name.endswith("/")}
    index.update({name: name for name in names if not name.endswith("/")})
    return index


def read_image_file(ref: str) -> bytes:
    """The bytes of what `ImageFiles.find` returned."""
    if ref.startswith(ZIP_PREFIX):
        member, _, archive = ref[len(ZIP_PREFIX):].rpartition(ZIP_SEPARATOR)
        try:
            return open_archive(archive).read(member)
        except KeyError:
            raise FileNotFoundError(f"{archive}: no member {member}") from None
        except (zipfile.BadZipFile, zlib.error) as exc:  # a damaged member: one image, not the run
            raise OSError(f"{archive}: member {member} unreadable ({exc})") from None
    return storage.read_bytes(ref)


@functools.lru_cache(maxsize=16)
def open_archive(location: str) -> zipfile.ZipFile:
    """A zip archive, opened once per process (its central directory is read once)."""
    try:
        source = S3RangeFile(location) if storage.is_s3(location) else location
        return zipfile.ZipFile(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"--images {location}: no such zip archive") from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"--images {location}: not a readable zip archive ({exc})") from None


class IncompleteRange(OSError):
    """A range request whose body broke or came short: asked for again."""


class S3RangeFile(io.RawIOBase):
    """A seekable S3 object read with Range requests, for zipfile: only the central directory and
    the members asked for cross the network. botocore retries throttling, 5xx and resets before a
    body; a body that breaks is asked for again (tenacity), `max_attempts` times in all."""

    def __init__(self, url: str, max_attempts: int = 5):
        super().__init__()
        self.url, self.max_attempts = url, max_attempts
        self.bucket, self.key = split_s3(url)
        found = storage.stat(url)
        if found is None:
            raise FileNotFoundError(url)
        self.size = found[0]
        self.position = 0
        self._cache_start, self._cache = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        offset = self.position - self._cache_start
        if not (0 <= offset and offset + wanted <= len(self._cache)):
            self._cache_start, self._cache = self.position, self._get(self.position, max(wanted, S3_MIN_RANGE))
            offset = 0
        chunk = self._cache[offset:offset + wanted]
        buffer[:len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)

    def _get(self, start: int, length: int) -> bytes:
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt

        end = min(start + length, self.size) - 1

        def failed(state) -> None:
            log.warning("%s: range %d-%d failed (%s), attempt %d of %d", self.url, start, end,
                        state.outcome.exception(), state.attempt_number, self.max_attempts)

        # A permanent error (403, 404) is raised at once; a broken or short body is asked for again.
        retrying = Retrying(retry=retry_if_exception_type(IncompleteRange), stop=stop_after_attempt(self.max_attempts),
                            after=failed)
        try:
            return retrying(self._get_once, start, end)
        except RetryError:
            raise StorageError(f"{self.url}: range {start}-{end} failed {self.max_attempts} times") from None

    def _get_once(self, start: int, end: int) -> bytes:
        try:
            body = storage.s3_client().get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end}")["Body"].read()
        except Exception as exc:
            error = s3_error(self.url, exc)
            if isinstance(error, (FileNotFoundError, PermissionError)):
                raise error from None
            raise IncompleteRange(f"{type(exc).__name__}: {exc}") from None
        if len(body) != end - start + 1:
            raise IncompleteRange(f"got {len(body)} of {end - start + 1} bytes")
        return body
