"""`maskx prepare` at the size of the real releases, on one machine: peak memory and time of the
annotation side, and conversion time per 1000 images against copying the same JPEG bytes.

Writes files shaped like the releases (VG v1.4: image_data.json with 108,077 images, objects.json
with ~3.8M objects, names and synsets, ~0.4 GB; COCO instances_train2017.json: 118,287 images and
860,001 polygon annotations, ~0.45 GB), then runs each step in a fresh process and reads its peak
RSS. `json.load` of the same file runs beside each reader, for the ratio.

    python bench/prepare_scale.py                 # full size: ~0.9 GB of JSON, about 10 minutes on 2 cores
    python bench/prepare_scale.py --scale 0.02    # a quick look (CI runs it smaller still)
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import tarfile
import tempfile
import time

from PIL import Image

VG_IMAGES, VG_OBJECTS_PER_IMAGE = 108_077, 35.2
COCO_IMAGES, COCO_ANNOTATIONS = 118_287, 860_001


def write_array(path: str, items) -> None:
    with open(path, "w") as f:
        f.write("[")
        for i, item in enumerate(items):
            f.write(("," if i else "") + json.dumps(item))
        f.write("]")


def write_vg(folder: str, images: int, rng: random.Random) -> None:
    synsets = [f"thing{i}.n.01" for i in range(7000)]
    weights = [1 / (i + 1) for i in range(len(synsets))]  # Zipf-like, as VG's synset frequencies
    write_array(os.path.join(folder, "image_data.json"), (
        {"width": 800, "url": f"https://cs.stanford.edu/people/rak248/VG_100K{'_2' if i % 2 else ''}/{i}.jpg",
         "height": 600, "image_id": i, "coco_id": None, "flickr_id": None} for i in range(1, images + 1)))

    def objects(image_id: int):
        count = max(1, int(rng.expovariate(1 / VG_OBJECTS_PER_IMAGE)))
        drawn = rng.choices(synsets, weights, k=count)
        for k, synset in enumerate(drawn):
            kind = rng.random()
            names = [] if kind < 0.09 else [synset.split(".")[0]]
            chosen = [] if kind < 0.09 else [synset] if kind < 0.98 else [synset, drawn[0]]
            yield {"synsets": chosen, "h": rng.randint(2, 500), "object_id": image_id * 100 + k, "merged_object_ids": [],
                   "names": names, "w": rng.randint(2, 700), "y": rng.randint(0, 500), "x": rng.randint(0, 700)}

    write_array(os.path.join(folder, "objects.json"), (
        {"image_id": i, "objects": list(objects(i)), "image_url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg"}
        for i in range(1, images + 1)))


def write_coco(path: str, images: int, annotations: int, rng: random.Random) -> None:
    categories = [{"supercategory": "thing", "id": i, "name": f"class{i}"} for i in range(1, 81)]

    def polygon():
        x, y, r = rng.uniform(50, 590), rng.uniform(50, 430), rng.uniform(5, 50)
        points = rng.randint(8, 40)
        return [round(v, 2) for k in range(points) for v in (x + r * rng.random(), y + r * rng.random())]

    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic, release-sized"}, "licenses": [], "images": [')
        for i in range(1, images + 1):
            f.write(("," if i > 1 else "") + json.dumps(
                {"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 480, "width": 640,
                 "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i}))
        f.write('], "annotations": [')
        for a in range(1, annotations + 1):
            segmentation = [polygon()]
            f.write(("," if a > 1 else "") + json.dumps(
                {"segmentation": segmentation, "area": 100.0, "iscrowd": 0, "image_id": rng.randint(1, images),
                 "bbox": [min(segmentation[0][0::2]), min(segmentation[0][1::2]), 20.0, 20.0],
                 "category_id": rng.randint(1, 80), "id": a}))
        f.write('], "categories": ' + json.dumps(categories) + "}")


def link_images(folder: str, names: list[str], width: int, height: int) -> None:
    """One small JPEG linked under every name: the readers only need the files to exist (symbolic
    links: a file takes at most 65,000 hard links)."""
    first = os.path.join(folder, names[0])
    os.makedirs(os.path.dirname(first), exist_ok=True)
    Image.new("RGB", (width, height), (120, 80, 40)).save(first, quality=50)
    for name in names[1:]:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(first, path)


# Steps, each run in a fresh process: (seconds, peak RSS in bytes, what it found).

def step_json_load(path: str):
    with open(path) as f:
        data = json.load(f)
    return len(data) if isinstance(data, list) else len(data["annotations"])


def step_vocab(coco: str, objects: str):
    from maskx.datasets.prepare import prepare_vocabulary

    return prepare_vocabulary(coco, objects).num_classes


def step_read_vg(image_data: str, objects: str, images: str, vocab_path: str):
    from maskx.datasets.image_files import ImageFiles
    from maskx.datasets.visual_genome import read_visual_genome
    from maskx.datasets.vocab import Vocabulary

    found = read_visual_genome(image_data, objects, ImageFiles([images]), Vocabulary.load(vocab_path))
    return sum(len(r.annotations) for r in found.records)


def step_read_coco(annotations: str, images: str, vocab_path: str):
    from maskx.datasets.coco import read_coco
    from maskx.datasets.image_files import ImageFiles
    from maskx.datasets.vocab import Vocabulary

    found = read_coco(annotations, ImageFiles([images]), Vocabulary.load(vocab_path))
    return sum(len(r.annotations) for r in found.records)


def step_prepare_coco(annotations: str, images: str, out: str, workers: int):
    from maskx.datasets.prepare import prepare_coco

    return prepare_coco(annotations, images, out, shard_size=250, workers=workers, progress=False).num_samples


def step_copy_bytes(images: str, out: str):
    """The floor: the same JPEG bytes read and written into a tar, nothing else."""
    with tarfile.open(out, "w") as tar:
        for name in sorted(os.listdir(images)):
            payload = open(os.path.join(images, name), "rb").read()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return len(os.listdir(images))


def _timed(connection, step, args, imports):
    for module in imports:  # imported before the clock starts: a conversion imports once, not per image
        importlib.import_module(module)
    start = time.perf_counter()
    found = step(*args)
    connection.send((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, found))


MASKX_MODULES = ("maskx.datasets.prepare", "maskx.datasets.coco", "maskx.datasets.visual_genome")


def measure(step, *args, imports=MASKX_MODULES):
    """(seconds, peak RSS of the step's process, what it found), in a fresh process forked from the
    small fork server (a peak RSS survives exec, so a process started from this grown one would
    report this one's), not a pool's: the conversion starts processes of its own."""
    context = multiprocessing.get_context("forkserver")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_timed, args=(send, step, args, imports))
    process.start()
    result = receive.recv()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the releases' size (default 1)")
    parser.add_argument("--workdir", help="keep the generated files here (default: a temporary folder)")
    parser.add_argument("--copy-images", type=int, default=1000, help="JPEGs in the conversion-vs-copy row (default 1000)")
    args = parser.parse_args()
    measure(len, "", imports=())  # starts the fork server while this process is still small
    work = args.workdir or tempfile.mkdtemp(prefix="maskx-prepare-scale-")
    rng = random.Random(0)
    vg_images, coco_images = max(2, int(VG_IMAGES * args.scale)), max(2, int(COCO_IMAGES * args.scale))
    coco_annotations = max(2, int(COCO_ANNOTATIONS * args.scale))
    started = time.perf_counter()
    os.makedirs(os.path.join(work, "vg"), exist_ok=True)
    write_vg(os.path.join(work, "vg"), vg_images, rng)
    coco = os.path.join(work, "instances_train.json")
    write_coco(coco, coco_images, coco_annotations, rng)
    link_images(os.path.join(work, "vg-images"), [f"VG_100K{'_2' if i % 2 else ''}/{i}.jpg" for i in range(1, vg_images + 1)], 800, 600)
    link_images(os.path.join(work, "coco-images"), [f"{i:012d}.jpg" for i in range(1, coco_images + 1)], 640, 480)
    objects = os.path.join(work, "vg", "objects.json")
    sizes = {name: os.path.getsize(path) / 2**20 for name, path in (("objects.json", objects), ("instances_train.json", coco))}
    print(f"wrote {vg_images} VG images ({sizes['objects.json']:.0f} MB objects.json), {coco_images} COCO images and "
          f"{coco_annotations} annotations ({sizes['instances_train.json']:.0f} MB) in {time.perf_counter() - started:.0f} s "
          f"under {work}")

    from maskx.datasets.prepare import prepare_vocabulary

    vocab_path = os.path.join(work, "vocab.json")
    prepare_vocabulary(coco, objects).save(vocab_path)
    rows = [
        ("json.load objects.json (what streaming replaces)", measure(step_json_load, objects, imports=()), vg_images),
        ("maskx prepare vocab (COCO categories + VG synsets)", measure(step_vocab, coco, objects), vg_images),
        ("maskx prepare vg: annotation side (reader)", measure(step_read_vg, os.path.join(work, "vg", "image_data.json"),
                                                              objects, os.path.join(work, "vg-images"), vocab_path), vg_images),
        ("json.load instances_train.json (what streaming replaces)", measure(step_json_load, coco, imports=()), coco_images),
        ("maskx prepare coco: annotation side (reader)", measure(step_read_coco, coco, os.path.join(work, "coco-images"),
                                                                vocab_path), coco_images),
    ]
    print(f"\n{'step':58} {'seconds':>8} {'s/1000 img':>10} {'peak RSS':>9}")
    for name, (seconds, peak, _), images in rows:
        print(f"{name:58} {seconds:8.1f} {1000 * seconds / images:10.3f} {peak / 2**30:8.2f}G")

    # Conversion against the floor of copying the same bytes, on COCO-sized JPEGs (~160 KB).
    jpegs = os.path.join(work, "copy-jpegs")
    os.makedirs(jpegs, exist_ok=True)
    template, angles = Image.effect_noise((640, 480), 60).convert("RGB"), random.Random(1)
    for i in range(1, args.copy_images + 1):
        template.rotate(angles.uniform(-3, 3)).save(os.path.join(jpegs, f"{i:012d}.jpg"), quality=90)
    small = os.path.join(work, "copy-instances.json")
    write_coco(small, args.copy_images, 7 * args.copy_images, random.Random(2))
    megabytes = sum(os.path.getsize(os.path.join(jpegs, n)) for n in os.listdir(jpegs)) / 2**20
    copy = measure(step_copy_bytes, jpegs, os.path.join(work, "copy.tar"), imports=())
    cores = os.cpu_count() or 1
    one = measure(step_prepare_coco, small, jpegs, os.path.join(work, "shards-1"), 1)
    shutil.rmtree(os.path.join(work, "shards-1"))
    every = measure(step_prepare_coco, small, jpegs, os.path.join(work, "shards-n"), cores)
    print(f"\n{args.copy_images} JPEGs, {megabytes:.0f} MB: copy the bytes into a tar {copy[0]:.2f} s; maskx prepare coco "
          f"{one[0]:.2f} s on 1 process ({one[0] / copy[0]:.1f}x the copy), {every[0]:.2f} s on {cores} processes "
          f"({every[0] / copy[0]:.1f}x the copy)")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
