"""Reading and writing shards and manifests in a local folder or an S3 bucket.

S3 goes through boto3 with the standard AWS credential chain; `AWS_ENDPOINT_URL` points it at
any S3-compatible endpoint. Requests retry in botocore's adaptive mode; a read that breaks in
the middle of an object resumes at the byte where it stopped.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import shutil
import tempfile
from typing import Optional

log = logging.getLogger(__name__)

# Errors worth retrying: throttling and 5xx are retried by botocore itself; these reach us from
# the middle of a streaming body, where botocore cannot help.
_PERMANENT_CODES = {"403", "404", "AccessDenied", "NoSuchKey", "NoSuchBucket", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "AllAccessDisabled"}


class StorageError(OSError):
    """A url that cannot be read or written for a reason retrying will not fix."""


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def join(base: str, name: str) -> str:
    if is_s3(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def resolve(base_dir: str, url: str) -> str:
    """A shard url of a manifest, relative to the manifest's folder unless absolute."""
    if is_s3(url) or os.path.isabs(url):
        return url
    return join(base_dir, url)


def parent(url: str) -> str:
    if is_s3(url):
        return url.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(url))


@functools.lru_cache(maxsize=None)
def s3_client():
    import boto3
    from botocore.config import Config

    # boto3 reads AWS_ENDPOINT_URL and the credential chain from the environment itself.
    return boto3.client(
        "s3",
        config=Config(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=60),
    )


def s3_error(url: str, exc: Exception) -> Exception:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{url}: no AWS credentials found (environment, config file or instance role)")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _PERMANENT_CODES or status in {"403", "404"}:
            kind = FileNotFoundError if status == "404" or code.startswith("NoSuch") else PermissionError
            return kind(f"{url}: {code or status} (not retried)")
    return exc


def read_bytes(url: str) -> bytes:
    if not is_s3(url):
        with open(url, "rb") as f:
            return f.read()
    bucket, key = split_s3(url)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise s3_error(url, exc) from None


def write_bytes(url: str, payload: bytes) -> None:
    if not is_s3(url):
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        tmp = url + ".tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, url)
        return
    bucket, key = split_s3(url)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=payload)
    except Exception as exc:
        raise s3_error(url, exc) from None


def create_exclusive(url: str, payload: bytes) -> bool:
    """Write `payload` to `url` only if nothing is there: True if this call created it, False if it
    existed (locally O_EXCL; on S3 a conditional put, If-None-Match: *). Two writers racing: one wins."""
    if not is_s3(url):
        # Written whole beside it, then hard-linked into place: link() fails if the name exists, and
        # a reader never sees the file half written (O_EXCL alone leaves a moment where it is empty).
        folder = os.path.dirname(os.path.abspath(url))
        os.makedirs(folder, exist_ok=True)
        descriptor, tmp = tempfile.mkstemp(dir=folder, prefix=".exclusive-")
        try:
            with os.fdopen(descriptor, "wb") as f:
                f.write(payload)
            os.chmod(tmp, 0o644)
            os.link(tmp, url)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS):
                raise
            return _create_exclusive_without_links(url, payload)  # a FUSE mount (s3fs, gcsfuse) has no links
        finally:
            os.unlink(tmp)
        return True
    from botocore.exceptions import ClientError

    bucket, key = split_s3(url)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=payload, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise s3_error(url, exc) from None
    except Exception as exc:
        raise s3_error(url, exc) from None
    return True


def _create_exclusive_without_links(url: str, payload: bytes) -> bool:
    """O_EXCL alone, where the filesystem cannot link: one writer wins; a reader may see the file empty
    for a moment."""
    try:
        descriptor = os.open(url, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as f:
        f.write(payload)
    return True


def put_file(local_path: str, url: str, metadata: Optional[dict[str, str]] = None) -> None:
    """Move a finished local file to url: a rename locally, a multipart upload to S3."""
    if not is_s3(url):
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        shutil.move(local_path, url)
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(url)
    try:
        s3_client().upload_file(
            local_path, bucket, key, ExtraArgs={"Metadata": metadata or {}},
            Config=TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20),
        )
    except Exception as exc:
        raise s3_error(url, exc) from None
    os.remove(local_path)


def remove_folder(url: str) -> None:
    """A folder and everything under it, or every object under an S3 prefix; nothing there is no error."""
    if not is_s3(url):
        shutil.rmtree(url, ignore_errors=True)
        return
    bucket, prefix = split_s3(url.rstrip("/") + "/")
    keys = sorted(prefix + key for key in list_keys(url))
    try:
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    except Exception as exc:
        raise s3_error(url, exc) from None


def download(url: str, local_path: str) -> None:
    """The whole object at an s3:// url into a local file (parallel ranged GETs for a large one)."""
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(url)
    try:
        s3_client().download_file(bucket, key, local_path,
                                  Config=TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20))
    except Exception as exc:
        raise s3_error(url, exc) from None


def list_folder(url: str) -> tuple[list[str], list[str]]:
    """(subfolder names, file names) directly under a folder or an S3 prefix; empty where nothing is."""
    if not is_s3(url):
        if not os.path.isdir(url):
            return [], []
        entries = sorted(os.scandir(url), key=lambda entry: entry.name)
        return [e.name for e in entries if e.is_dir()], [e.name for e in entries if e.is_file()]
    bucket, prefix = split_s3(url.rstrip("/") + "/")
    folders, files = [], []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            folders += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            files += [item["Key"][len(prefix):] for item in page.get("Contents", [])]
    except Exception as exc:
        raise s3_error(url, exc) from None
    return sorted(folders), sorted(files)


def list_keys(url: str) -> set[str]:
    """Every object key under an S3 prefix, relative to it (all levels)."""
    bucket, prefix = split_s3(url.rstrip("/") + "/")
    keys = set()
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(item["Key"][len(prefix):] for item in page.get("Contents", []))
    except Exception as exc:
        raise s3_error(url, exc) from None
    return keys


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stat(url: str) -> Optional[tuple[int, dict[str, str]]]:
    """(bytes, user metadata) of the object at url, or None where nothing is there.
    Local files carry no metadata."""
    if not is_s3(url):
        return (os.path.getsize(url), {}) if os.path.isfile(url) else None
    bucket, key = split_s3(url)
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        err = s3_error(url, exc)
        if isinstance(err, FileNotFoundError):
            return None
        raise err from None
    return int(head["ContentLength"]), dict(head.get("Metadata", {}))


READ_CHUNK = 64 * 1024


class S3RangeReader(io.RawIOBase):
    """A readable S3 object that reopens at its current byte when the stream breaks.

    botocore retries failed requests (5xx, throttling, resets before the body); a connection that
    drops while the body is being read surfaces here, so we ask again from `position` with a Range
    request, a bounded number of times.
    """

    def __init__(self, url: str, max_resumes: int = 8):
        super().__init__()
        self.url = url
        self.bucket, self.key = split_s3(url)
        self.position = 0
        self.max_resumes = max_resumes
        self.resumes = 0
        self.body = None
        self.size: Optional[int] = None
        self._open()

    def _open(self) -> None:
        kwargs = {"Range": f"bytes={self.position}-"} if self.position else {}
        try:
            response = s3_client().get_object(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            raise s3_error(self.url, exc) from None
        self.body = response["Body"]
        if self.size is None:
            self.size = int(response["ContentLength"])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        if self.size is not None and self.position >= self.size:
            return 0
        while True:
            try:
                # Bounded reads: the bytes of a read that breaks are lost, so a resume starts at most
                # one chunk back from where the connection dropped.
                chunk = self.body.read(min(len(buffer), READ_CHUNK))
                if not chunk and self.position < self.size:
                    raise ConnectionError(f"stream ended at byte {self.position} of {self.size}")
                break
            except (BotoCoreError, HTTPError, ConnectionError, OSError) as exc:
                if self.resumes >= self.max_resumes:
                    raise StorageError(f"{self.url}: read failed at byte {self.position} after {self.resumes} resumes: {exc}") from None
                self.resumes += 1
                log.warning("%s: read broke at byte %d (%s); resuming", self.url, self.position, type(exc).__name__)
                self._open()
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
        super().close()


def open_read(url: str, bufsize: int = 1 << 20):
    if is_s3(url):
        return io.BufferedReader(S3RangeReader(url), buffer_size=bufsize)
    return open(url, "rb", buffering=bufsize)
