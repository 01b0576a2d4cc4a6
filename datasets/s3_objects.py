"""S3 objects through boto3: the client (the standard AWS credential chain; `AWS_ENDPOINT_URL`
points it at any S3-compatible endpoint; botocore's adaptive retries), errors that retrying will
not fix named as such, and a reader that resumes at the byte where a broken stream stopped.
`storage.py` is where callers go for any url, local or s3://."""
from __future__ import annotations

import functools
import io
import logging
from typing import Optional

log = logging.getLogger(__name__)

# Errors worth retrying: throttling and 5xx are retried by botocore itself; these reach us from
# the middle of a streaming body, where botocore cannot help.
_PERMANENT_CODES = {"403", "404", "AccessDenied", "NoSuchKey", "NoSuchBucket", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "AllAccessDisabled"}


class StorageError(OSError):
    """A url that cannot be read or written for a reason retrying will not fix."""


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


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


READ_CHUNK = 64 * 1024


class S3RangeReader(io.RawIOBase):
    """A readable S3 object that reopens at its current byte when the stream breaks.

    botocore retries failed requests (5xx, throttling, resets before the body); a connection that
    drops while the body is being read surfaces here, so we ask again from `position` with a Range
    request (tenacity), `max_resumes` times in the object's life.
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
        from tenacity import RetryError, Retrying, retry_if_exception_type
        from urllib3.exceptions import HTTPError

        if self.size is not None and self.position >= self.size:
            return 0
        # The budget of resumes is the object's, not one read's: a stream that keeps breaking ends.
        resuming = Retrying(retry=retry_if_exception_type((BotoCoreError, HTTPError, ConnectionError, OSError)),
                            stop=lambda _: self.resumes >= self.max_resumes, before_sleep=self._resume)
        try:
            # Bounded reads: the bytes of a read that breaks are lost, so a resume starts at most one
            # chunk back from where the connection dropped.
            chunk = resuming(self._read, min(len(buffer), READ_CHUNK))
        except RetryError as exc:
            raise StorageError(f"{self.url}: read failed at byte {self.position} after {self.resumes} resumes: "
                               f"{exc.last_attempt.exception()}") from None
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)

    def _read(self, size: int) -> bytes:
        chunk = self.body.read(size)
        if not chunk and self.position < self.size:
            raise ConnectionError(f"stream ended at byte {self.position} of {self.size}")
        return chunk

    def _resume(self, state) -> None:
        self.resumes += 1
        log.warning("%s: read broke at byte %d (%s); resuming", self.url, self.position,
                    type(state.outcome.exception()).__name__)
        self._open()

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
        super().close()
