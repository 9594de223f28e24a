"""The generated caption / VQA data (prismatic/vla/datasets/vqa.py): determinism, held-out split, answer sets,
and scene labels checked against the rendered pixels by an independent colour analysis."""

import json

import numpy as np
import pytest

from prismatic.vla.datasets import vqa
from prismatic.vla.datasets.synthetic import PALETTE

SIZE = 56  # the tiny preset's vision.image_size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa") / "data"
    return vqa.write_vqa_dataset(root, num_train_scenes=60, num_heldout_scenes=30, image_size=SIZE, seed=5)


def _colour_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of each palette colour: a shade k * rgb with k in [0.6, 1] (balls are shaded, cubes flat)."""
    pixels = image.astype(np.float64)
    out = {}
    for name, rgb in PALETTE:
        c = np.array(rgb, np.float64)
        k = pixels @ c / (c @ c)
        residual = np.linalg.norm(pixels - k[..., None] * c, axis=-1)
        out[name] = (residual < 6) & (k > 0.6) & (k < 1.02)
    return out


def _objects_from_pixels(image: np.ndarray) -> list[dict]:
    """Colour, centroid x and shape (flat = cube, shaded = ball) of every object visible in the image."""
    found = []
    exact = {name: np.all(image == np.array(rgb, np.uint8), axis=-1) for name, rgb in PALETTE}
    for name, mask in _colour_masks(image).items():
        if mask.sum() >= 10:
            flat = (exact[name] & mask).sum() / mask.sum()
            found.append({"colour": name, "x": float(np.nonzero(mask)[1].mean()),
                          "shape": "cube" if flat > 0.5 else "ball"})
    return found


def _by_scene(samples):
    scenes = {}
    for s in samples:
        scenes.setdefault(s.scene_id, []).append(s)
    return scenes


def test_deterministic_and_seed_dependent(dataset, tmp_path):
    again = vqa.write_vqa_dataset(tmp_path / "again", num_train_scenes=60, num_heldout_scenes=30, image_size=SIZE,
                                  seed=5)
    other = vqa.write_vqa_dataset(tmp_path / "other", num_train_scenes=60, num_heldout_scenes=30, image_size=SIZE,
                                  seed=6)
    for split in vqa.SPLITS:
        assert (dataset / split / "samples.jsonl").read_text() == (again / split / "samples.jsonl").read_text()
        with np.load(dataset / split / "images.npz") as a, np.load(again / split / "images.npz") as b, \
                np.load(other / split / "images.npz") as c:
            assert np.array_equal(a["images"], b["images"])
            assert not np.array_equal(a["images"], c["images"])
    assert not list(tmp_path.glob("*.tmp-*"))  # written through a temporary directory


def test_samples_answers_and_attributes(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["counts"] == {"train": {"scenes": 60, "samples": 360}, "heldout": {"scenes": 30, "samples": 180}}
    for split in vqa.SPLITS:
        samples = vqa.load_vqa_split(dataset, split)
        for group in _by_scene(samples).values():
            assert [s.question_type for s in group] == list(vqa.QUESTION_TYPES)
            assert len({s.caption for s in group}) == 1 and len({json.dumps(s.attributes) for s in group}) == 1
        for s in samples:
            assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
            assert s.answer in vqa.ANSWERS[s.question_type]
            assert s.attributes.keys() == vqa.ATTRIBUTE_CLASSES.keys()
            for key, value in s.attributes.items():
                assert 0 <= value < vqa.ATTRIBUTE_CLASSES[key], key
            prompt = vqa.prompt_for(s)
            assert s.question in prompt and prompt.endswith("<|im_start|>assistant\n")
            assert vqa.target_text(s.answer) == s.answer + "<|im_end|>"
        # Both answers of every yes/no and left/right type occur (no degenerate question type).
        for qtype in ("shape", "left_right", "nearer_gripper", "instruction"):
            assert {s.answer for s in samples if s.question_type == qtype} == set(vqa.ANSWERS[qtype]), qtype


def test_heldout_split_new_scenes_and_new_questions(dataset):
    train, heldout = vqa.load_vqa_split(dataset, "train"), vqa.load_vqa_split(dataset, "heldout")
    train_images = {s.image.tobytes() for s in train}
    assert not train_images & {s.image.tobytes() for s in heldout}

    def names_heldout_combo(text):
        return any(f"{c} {s}" in text for c, s in vqa.HELDOUT_COMBINATIONS)

    # Training questions never name a held-out combination (training captions may: the images contain them).
    assert not any(names_heldout_combo(s.question) for s in train)
    assert not any(s.heldout_question for s in train)
    assert any(names_heldout_combo(s.caption) for s in train)
    # Odd held-out scenes are compositional: their naming questions all name a held-out combination; even
    # held-out scenes ask the training forms (never naming one), so both kinds are measured on new scenes.
    naming = [s for s in heldout if s.question_type in vqa.NAMING_TYPES]
    compositional = [s for s in naming if s.scene_id % 2 == 1]
    seen_forms = [s for s in naming if s.scene_id % 2 == 0]
    assert compositional and all(s.heldout_question and names_heldout_combo(s.question) for s in compositional)
    assert seen_forms and not any(s.heldout_question or names_heldout_combo(s.question) for s in seen_forms)
    assert all(vqa.is_compositional("heldout", s.scene_id) == s.heldout_question for s in naming)
    assert not any(s.heldout_question for s in heldout if s.question_type not in vqa.NAMING_TYPES)


def test_labels_match_the_pixels(dataset):
    """Count, leftmost colour / shape and the colour / shape answers, recovered from the image alone."""
    for split in vqa.SPLITS:
        for group in _by_scene(vqa.load_vqa_split(dataset, split)).values():
            s = group[0]
            objects = _objects_from_pixels(s.image)
            assert len(objects) == s.attributes["count"] + vqa.MIN_OBJECTS
            by_x = sorted(objects, key=lambda o: o["x"])
            assert vqa.COLOURS[s.attributes["leftmost_colour"]] == by_x[0]["colour"]
            assert ("cube", "ball")[s.attributes["leftmost_shape"]] == by_x[0]["shape"]
            answers = {q.question_type: q for q in group}
            colour_q = answers["colour"]
            end = by_x[0] if "leftmost" in colour_q.question else by_x[-1]
            assert colour_q.answer == end["colour"]
            shape_q = answers["shape"]
            asked = next(o for o in objects if f"the {o['colour']} object" in shape_q.question)
            assert shape_q.answer == asked["shape"]
            assert answers["count"].answer == vqa.COUNT_WORDS[len(objects) - vqa.MIN_OBJECTS]
            side_q = answers["left_right"]  # which half of the image the named object's pixels are in
            named = next(o for o in objects if f"the {o['colour']} {o['shape']} " in side_q.question)
            assert side_q.answer == ("left" if named["x"] < SIZE / 2 else "right")


def test_ensure_is_idempotent_and_regenerates(tmp_path):
    root = tmp_path / "vqa"
    vqa.ensure_vqa_dataset(root, image_size=SIZE, num_train_scenes=5, num_heldout_scenes=3)
    stamp = (root / "meta.json").stat().st_mtime_ns
    vqa.ensure_vqa_dataset(root, image_size=SIZE, num_train_scenes=5, num_heldout_scenes=3)
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    vqa.ensure_vqa_dataset(root, image_size=SIZE, num_train_scenes=7, num_heldout_scenes=3)
    assert json.loads((root / "meta.json").read_text())["num_train_scenes"] == 7
    assert len(vqa.load_vqa_split(root, "train")) == 7 * len(vqa.QUESTION_TYPES)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no VQA dataset at"):
        vqa.load_vqa_split(tmp_path / "missing", "train")
    root = vqa.write_vqa_dataset(tmp_path / "vqa", num_train_scenes=2, num_heldout_scenes=2, image_size=SIZE)
    with pytest.raises(ValueError, match="split must be one of"):
        vqa.load_vqa_split(root, "test")
    (root / "heldout" / "images.npz").unlink()
    with pytest.raises(FileNotFoundError, match="heldout.*images.npz"):
        vqa.load_vqa_split(root, "heldout")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a VQA dataset"):
        vqa.write_vqa_dataset(foreign, num_train_scenes=2, num_heldout_scenes=2, image_size=SIZE)
    assert (foreign / "notes.txt").exists()
    with pytest.raises(ValueError, match="num_train_scenes"):
        vqa.write_vqa_dataset(tmp_path / "x", num_train_scenes=0, num_heldout_scenes=2, image_size=SIZE)
