"""S3 faults while streaming shards, injected by a proxy in front of the moto server on 127.0.0.1:
throttling, 5xx and connections reset mid-body are retried and resumed at the right byte; a
permanent 403/404 fails at once, naming the url. The streams' cases run with the node's shard cache
on and off."""
import pytest

from maskx.datasets import storage
from maskx.datasets.s3_objects import READ_CHUNK
from maskx.datasets.shard_cache import CacheSettings
from maskx.datasets.stream import EvalStream, load_sources
from ..s3_fault_proxy import Fault
from .s3_shards import coco_shards_on_s3

pytestmark = [pytest.mark.integration, pytest.mark.s3]

SHARDS = "s3://maskx-faults/coco/train"


@pytest.fixture(scope="module")
def shards_on_s3(s3_endpoint, synth_paths):
    manifest = coco_shards_on_s3(SHARDS, synth_paths, shard_size=24)
    return {url: storage.read_bytes(url) for url in manifest.shard_urls()}


@pytest.fixture
def proxy(shards_on_s3, s3_proxy):
    return s3_proxy


@pytest.mark.core
def test_throttling_5xx_and_resets_are_retried_and_resumed_at_the_right_byte(proxy, shards_on_s3, caplog):
    url, payload = next(iter(shards_on_s3.items()))
    assert len(payload) > 2 * READ_CHUNK + 1
    key = url.split("maskx-faults", 1)[1]
    first_cut, second_cut = READ_CHUNK + 5000, READ_CHUNK + 7000
    proxy.faults = [Fault("GET", key, times=2, status=503), Fault("GET", key, status=500),
                    Fault("GET", key, reset_after=first_cut), Fault("GET", key, reset_after=second_cut)]
    with caplog.at_level("WARNING"), storage.open_read(url) as f:
        read = f.read()
    assert read == payload  # byte for byte, across two broken connections
    gets = proxy.requests_for(key)
    assert [g.fault for g in gets] == ["status 503", "status 503", "status 500", f"reset after {first_cut}",
                                       f"reset after {second_cut}", None]
    # botocore retried the error answers; each broken body reopens at the first byte not yet delivered
    # (whole chunks before the cut).
    resumed_at = [READ_CHUNK, 2 * READ_CHUNK]
    assert [g.range for g in gets] == [None, None, None, None] + [f"bytes={b}-" for b in resumed_at]
    assert all(f"read broke at byte {b}" in caplog.text for b in resumed_at)


def sources_read(cache_folder):
    """The manifest's sources, read through a shard cache in `cache_folder` (None: straight from S3)."""
    sources, vocab = load_sources([(SHARDS, 1.0)])
    for source in sources:
        source.cache = CacheSettings(str(cache_folder), 10**9) if cache_folder else None
    return sources, vocab


@pytest.mark.core
@pytest.mark.parametrize("cached", [False, True], ids=["streamed", "cached"])
def test_a_stream_over_flaky_s3_yields_every_sample(proxy, shards_on_s3, cached, tmp_path):
    for url in shards_on_s3:
        key = url.split("maskx-faults", 1)[1]
        proxy.faults += [Fault("GET", key, status=503), Fault("GET", key, reset_after=READ_CHUNK + 3000)]
    sources, vocab = sources_read(tmp_path if cached else None)
    stream = EvalStream(sources, vocab, batch_size=4)
    keys = [k for batch in stream for k in batch.keys]
    assert sorted(keys) == sorted(f"coco-{i:012d}" for i in range(1, 25))
    assert stream.skips.count == 0
    assert all(f.times == 0 for f in proxy.faults)  # every fault was hit


@pytest.mark.parametrize("cached", [False, True], ids=["streamed", "cached"])
@pytest.mark.parametrize("status, error", [(403, PermissionError), (404, FileNotFoundError)])
def test_a_permanent_error_fails_at_once_naming_the_url(proxy, shards_on_s3, status, error, cached, tmp_path):
    url = next(iter(shards_on_s3))
    key = url.split("maskx-faults", 1)[1]
    proxy.faults = [Fault("GET", key, times=100, status=status)]
    with pytest.raises(error, match=url):
        storage.open_read(url).read()
    assert len(proxy.requests_for(key)) == 1  # not retried
    sources, vocab = sources_read(tmp_path if cached else None)
    with pytest.raises(error, match=url):
        list(EvalStream(sources, vocab, batch_size=4))


@pytest.fixture(scope="module")
def zip_on_s3(s3_endpoint, shards_on_s3):
    """A release's zip on S3 as `maskx prepare` reads it in place: one stored member of 200 KB (written
    before the proxy, which passes no streamed upload)."""
    import io
    import os
    import zipfile

    member = os.urandom(200 * 1024)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("val2017/000000000001.jpg", member)
    url = "s3://maskx-faults/zips/val2017.zip"
    storage.write_bytes(url, archive.getvalue())
    return url, member


def test_a_zip_range_broken_mid_body_is_asked_again(zip_on_s3, proxy, caplog):
    import zipfile

    from maskx.datasets.image_files import S3RangeFile

    url, member = zip_on_s3
    # zipfile reads the 22-byte end record first: its body breaks after 10 bytes.
    proxy.faults = [Fault("GET", "/zips/val2017.zip", reset_after=10)]
    with caplog.at_level("WARNING"), zipfile.ZipFile(S3RangeFile(url)) as z:
        assert z.read("val2017/000000000001.jpg") == member
    assert proxy.faults[0].times == 0 and "attempt 1 of 5" in caplog.text and "attempt 2 of 5" not in caplog.text


def test_a_zip_range_that_keeps_breaking_fails_naming_it_after_its_attempts(zip_on_s3, proxy, caplog):
    from maskx.datasets.image_files import S3RangeFile
    from maskx.datasets.s3_objects import StorageError

    url, _ = zip_on_s3
    proxy.faults = [Fault("GET", "/zips/val2017.zip", times=3, reset_after=1000)]
    with pytest.raises(StorageError, match=rf"{url}: range 0-\d+ failed 3 times"):
        S3RangeFile(url, max_attempts=3).read(10)
    assert [f.times for f in proxy.faults] == [0] and caplog.text.count("failed (") == 3


def test_a_shard_stream_that_keeps_breaking_ends_after_its_resumes(proxy, shards_on_s3):
    from maskx.datasets.s3_objects import S3RangeReader, StorageError

    url, _ = next(iter(shards_on_s3.items()))
    key = url.split("maskx-faults", 1)[1]
    proxy.faults = [Fault("GET", key, times=4, reset_after=READ_CHUNK // 2)]  # no read gets a whole chunk
    reader = S3RangeReader(url, max_resumes=2)
    with pytest.raises(StorageError, match=rf"{url}: read failed at byte 0 after 2 resumes"):
        reader.read(READ_CHUNK)
    assert [g.fault for g in proxy.requests_for(key)] == [f"reset after {READ_CHUNK // 2}"] * 3  # the open, 2 resumes
