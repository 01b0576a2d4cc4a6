"""`maskx predict` over files, without Ray: ids that never collide, overlays that never overwrite an
input, and `predict --ray`'s refusals that need no cluster (a dataset's folder, moved weights)."""
import json

import pytest
from PIL import Image

from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary
from maskx.orchestrator.serving import block_folder, predictions, ray_predictions
from maskx.orchestrator.serving.inference import load_model

from ...predicting import write_known_logits_checkpoint


def test_image_ids_never_collide():
    assert predictions.image_ids(["/x/000000000139.jpg", "/x/000000000285.jpg"]) == [139, 285]  # COCO's own
    # a stray file in a COCO folder leaves the COCO ids as they are (they score against COCO's annotations)
    assert predictions.image_ids(["/x/000000000139.jpg", "/x/000000000285.jpg", "/x/broken.jpg"]) == [139, 285, 286]
    assert predictions.image_ids(["/x/2.jpg", "/x/a.jpg"]) == [2, 3]  # was 2 and 2
    assert predictions.image_ids(["/x/a1.jpg", "/x/b1.jpg"]) == [1, 2]  # was 1 and 1
    assert predictions.image_ids(["/x/img7.png", "/x/img07.jpg", "/x/img8.jpg"]) == [9, 10, 8]  # 7 twice


@pytest.fixture(scope="module")
def known_logits_model(tmp_path_factory):
    return write_known_logits_checkpoint(str(tmp_path_factory.mktemp("model")), build_vocabulary(COCO_CATEGORIES))


def test_predicting_a_folder_into_itself_overwrites_no_input_and_maps_ids_to_files(known_logits_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("a1.png", (200, 30, 30)), ("b1.png", (30, 200, 30)), ("b1.jpg", (30, 30, 200))):
        Image.new("RGB", (96, 80), colour).save(folder / name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    summary = predictions.predict_images(load_model(known_logits_model), str(folder), str(folder), batch_size=1,
                                         overlays=True, progress=False)
    assert {name: (folder / name).read_bytes() for name in before} == before  # every input as it was
    assert sorted(p.name for p in (folder / "overlays").iterdir()) == ["a1.png.png", "b1.jpg.png", "b1.png.png"]
    ids = json.loads((folder / "image_ids.json").read_text())
    assert sorted(ids.values()) == sorted(str(folder / name) for name in before) and len(ids) == 3
    results = json.loads((folder / "results.json").read_text())
    assert summary.images == 3 and {r["image_id"] for r in results} <= {int(i) for i in ids}


def test_predict_on_ray_refuses_a_dataset_folder_and_moved_weights_before_starting_anything(known_logits_model,
                                                                                           tmp_path):
    from maskx.orchestrator.serving.inference import model_weights

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "1.jpg")
    dataset = tmp_path / "shards"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"shards": []}))
    weights = model_weights(known_logits_model)
    with pytest.raises(ValueError, match="holds a manifest.json but no plan.json"):
        ray_predictions.predict_on_ray(known_logits_model, weights, str(dataset), images=str(images))

    cfg, vocab, state_dict = weights
    out = tmp_path / "out"
    out.mkdir()
    plan = {"model": "models:/m@champion", "weights_sha256": block_folder.weights_digest(state_dict),
            "inputs": str(images), "block_size": 64, "blocks": 1, "images": 1}
    (out / "plan.json").write_text(json.dumps(plan))  # an earlier run, when the alias named these weights
    moved = {name: tensor + 1 if name.endswith("cls_score.bias") else tensor for name, tensor in state_dict.items()}
    with pytest.raises(ValueError, match="holds another job's blocks \\(weights_sha256 "):
        ray_predictions.predict_on_ray("models:/m@champion", (cfg, vocab, moved), str(out), images=str(images))
    assert block_folder.weights_digest(moved) != block_folder.weights_digest(state_dict)
    assert block_folder.weights_digest({k: v.clone() for k, v in state_dict.items()}) == plan["weights_sha256"]
