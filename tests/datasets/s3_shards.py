"""The session's synthetic COCO train split prepared as shards on the test S3 endpoint (moto)."""
from maskx.datasets import storage
from maskx.datasets.prepare import prepare_coco
from maskx.datasets.shard_format import Manifest, load_manifest


def coco_shards_on_s3(url: str, synth_paths: dict, shard_size: int) -> Manifest:
    """`url` (s3://BUCKET/...) made a shards folder of the synthetic COCO train images, `shard_size` a shard."""
    storage.s3_client().create_bucket(Bucket=url.split("/")[2])
    prepare_coco(synth_paths["coco_train_annotations"], synth_paths["coco_train_images"], url, shard_size=shard_size,
                 workers=1, progress=False)
    return load_manifest(url)
