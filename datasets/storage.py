"""Reading and writing shards and manifests in a local folder or an S3 bucket.

Every function takes a local path or an s3:// url. S3 goes through `s3_objects.py` (boto3 with the
standard AWS credential chain; `AWS_ENDPOINT_URL` points it at any S3-compatible endpoint; requests
retry in botocore's adaptive mode; a read that breaks in the middle of an object resumes at the byte
where it stopped).
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import tempfile
from typing import Optional

from .s3_objects import S3RangeReader, s3_client, s3_error, split_s3

log = logging.getLogger(__name__)


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


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
            # The prefix's own key is a folder marker (what a filesystem-like writer, e.g. pyarrow's
            # S3 filesystem under Ray Train, leaves), not a file in it.
            files += [item["Key"][len(prefix):] for item in page.get("Contents", []) if item["Key"] != prefix]
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


def open_read(url: str, bufsize: int = 1 << 20):
    if is_s3(url):
        return io.BufferedReader(S3RangeReader(url), buffer_size=bufsize)
    return open(url, "rb", buffering=bufsize)
