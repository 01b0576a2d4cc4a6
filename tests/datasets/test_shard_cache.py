"""The node's shard cache over a real S3 endpoint (moto, behind a proxy that counts the requests): a
shard crosses the network once per node whatever the epochs and processes, the least recently used
go past the limit, a download that is not what the manifest says is never kept, and the streams read
every sample through it, over flaky S3 too (test_s3_faults.py runs with it on and off)."""
import json
import os
import subprocess
import sys

import pytest

from maskx.datasets import storage
from maskx.datasets.shard_cache import CachedShard, CacheSettings, ShardCache
from maskx.datasets.stream import EvalStream, load_sources

from .s3_shards import coco_shards_on_s3

# moto in this process, a second each: all in the CI lane.
pytestmark = [pytest.mark.integration, pytest.mark.core, pytest.mark.s3]

SHARDS = "s3://maskx-cache/coco/train"


@pytest.fixture(scope="module")
def shards(s3_endpoint, synth_paths):
    manifest = coco_shards_on_s3(SHARDS, synth_paths, shard_size=6)
    return [CachedShard(url, entry.bytes, entry.sha256) for url, entry in zip(manifest.shard_urls(), manifest.shards)]


@pytest.fixture
def counted(shards, s3_proxy):
    """Every S3 request from here on goes through a proxy that records it."""
    return s3_proxy


def shard_gets(proxy, shards):
    return {shard.url: len(proxy.requests_for(shard.url.split("maskx-cache", 1)[1])) for shard in shards}


READ_EVERY_SHARD = """
import json, sys
from maskx.datasets.shard_cache import CachedShard, CacheSettings, ShardCache
folder, shards = sys.argv[1], [CachedShard(*s) for s in json.loads(sys.argv[2])]
cache = ShardCache(CacheSettings(folder, 10**9))
for i, shard in enumerate(shards):
    with cache.open(shard, shards[i + 1:]) as f:
        f.read()
"""


def test_a_shard_crosses_the_network_once_per_node_whatever_the_epochs_and_processes(counted, shards, tmp_path):
    """Two processes of the node read every shard at once (each fetching ahead), then again: one GET
    per shard in all."""
    arguments = [sys.executable, "-c", READ_EVERY_SHARD, str(tmp_path / "cache"), json.dumps([list(vars(s).values()) for s in shards])]
    readers = [subprocess.Popen(arguments, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(reader.wait(timeout=120) == 0 for reader in readers), [reader.stderr.read() for reader in readers]
    assert subprocess.run(arguments, capture_output=True, timeout=120).returncode == 0  # a second epoch
    assert shard_gets(counted, shards) == {shard.url: 1 for shard in shards}
    kept = sorted(name for name in os.listdir(tmp_path / "cache") if name.endswith(".tar"))
    assert kept == sorted(f"{shard.sha256}.tar" for shard in shards)


def test_past_the_limit_the_least_recently_used_shard_goes(counted, shards, tmp_path):
    first, second, third = shards[:3]
    cache = ShardCache(CacheSettings(str(tmp_path), limit_bytes=first.bytes + second.bytes + third.bytes - 1, ahead=0))
    for shard in (first, second, first, third):  # `second` is the least recently used when `third` comes
        with cache.open(shard) as f:
            assert len(f.read()) == shard.bytes
    assert sorted(os.listdir(tmp_path)) == sorted([f"{first.sha256}.tar", f"{first.sha256}.tar.lock",
                                                   f"{second.sha256}.tar.lock", f"{third.sha256}.tar",
                                                   f"{third.sha256}.tar.lock"])
    assert shard_gets(counted, shards[:3]) == {first.url: 1, second.url: 1, third.url: 1}


def test_a_download_unlike_its_manifest_entry_is_never_kept_and_the_shard_is_read_from_s3(counted, shards, tmp_path,
                                                                                          caplog):
    shard = shards[0]
    stale = CachedShard(shard.url, shard.bytes, "0" * 64)  # the object changed since the manifest was written
    cache = ShardCache(CacheSettings(str(tmp_path), 10**9))
    with caplog.at_level("WARNING"), cache.open(stale) as f:
        assert f.read() == storage.read_bytes(shard.url)
    assert "its manifest says" in caplog.text and "not cached, read from S3 instead" in caplog.text
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tar") or ".partial" in name]


def test_the_eval_stream_reads_every_sample_once_through_the_cache_across_epochs(counted, shards, tmp_path):
    sources, vocab = load_sources([(SHARDS, 1.0)])
    for source in sources:
        source.cache = CacheSettings(str(tmp_path), 10**9)
    epochs = [[key for batch in EvalStream(sources, vocab, batch_size=4) for key in batch.keys] for _ in range(2)]
    assert epochs[0] == epochs[1] and sorted(epochs[0]) == sorted(f"coco-{i:012d}" for i in range(1, 25))
    assert shard_gets(counted, shards) == {shard.url: 1 for shard in shards}


def test_a_download_that_fails_streams_the_shard_from_s3_instead_of_failing_the_step(counted, shards, tmp_path,
                                                                                     caplog):
    shard = shards[0]
    cache = ShardCache(CacheSettings(str(tmp_path), 10**9))
    # Where the download would go, something it cannot write (as a full disk refuses): IsADirectoryError.
    (tmp_path / f"{shard.sha256}.tar.partial-{os.getpid()}").mkdir()
    with caplog.at_level("WARNING"), cache.open(shard) as f:
        assert f.read() == storage.read_bytes(shard.url)
    assert "not cached (IsADirectoryError" in caplog.text and "read from S3 instead" in caplog.text


def test_a_dead_reader_s_partial_download_is_removed_and_a_live_one_counts_against_the_limit(counted, shards, tmp_path):
    first, second = shards[:2]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{first.sha256}.tar.partial-{dead.pid}").write_bytes(b"x" * 10**6)  # killed mid-download
    live = tmp_path / f"{second.sha256}.tar.partial-{os.getpid()}"  # a reader of this node, downloading now
    live.write_bytes(b"x" * first.bytes)
    cache = ShardCache(CacheSettings(str(tmp_path), limit_bytes=2 * first.bytes + 10, ahead=0))
    with cache.open(first) as f:
        assert len(f.read()) == first.bytes
    assert not (tmp_path / f"{first.sha256}.tar.partial-{dead.pid}").exists()
    assert (tmp_path / f"{first.sha256}.tar").exists() and live.exists()
    cache.evict(room_for=first.bytes)  # a third shard's worth: only the finished one can go
    assert not (tmp_path / f"{first.sha256}.tar").exists() and live.exists()
