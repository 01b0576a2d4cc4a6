"""The release's annotation files, read as streams: the real VG objects.json (~400 MB, 3.8M objects)
and COCO's instances_train2017.json (~450 MB) would take several GB each as `json.load` objects."""
from __future__ import annotations

from typing import Iterator


def iter_json_array(path: str, prefix: str = "item") -> Iterator:
    """The items of a JSON array in a file, one at a time (`item`: the top level's; `annotations.item`:
    those of the top-level key `annotations`). ijson's C parser builds each item."""
    import ijson

    with open(path, "rb") as f:
        yield from ijson.items(f, prefix, use_float=True)
