"""Generated image-text data (captions + closed-set VQA) about scenes drawn by the synthetic renderer.

Used to pretrain the tiny / mid VLM (`prismatic.training.vlm_pretrain`) and by the retention probe. Each
scene is a top-down "agentview" of the table (`prismatic.vla.datasets.synthetic._render`, the same renderer and
object placement as the `libero_synthetic` demos) with 2-4 objects of distinct colours (cube or ball) and
the open gripper hovering somewhere above the table. Every scene yields one caption and one question of
each type in `QUESTION_TYPES`:

    colour          "what colour is the leftmost object?" / "... rightmost ..."        -> one of 8 colours
    shape           "what shape is the red object?"                                     -> cube | ball
    count           "how many objects are on the table?"                                -> two | three | four
    left_right      "is the red cube on the left or the right side of the table?"       -> left | right
    nearer_gripper  "is the red cube nearer the gripper than the blue ball?"            -> yes | no
    instruction     "does the instruction 'pick up the red cube' fit this scene?"       -> yes | no

Left/right and nearer/farther are never ambiguous: scenes are redrawn until every pair of objects differs by
at least `MIN_X_GAP` in x and by at least `MIN_DISTANCE_GAP` in distance to the gripper, and every object is at
least `MIN_SIDE_GAP` away from the table's centre line (x = 0).

Held-out split. Held-out scenes come from a different random stream than training scenes (new scenes, new
images). Four (colour, shape) combinations (`HELDOUT_COMBINATIONS`) are never named in a training question
(they do appear in training images and captions, so the vision side has seen them). Every other held-out
scene (odd `scene_id`) is compositional: it contains one object of a held-out combination and its
object-naming questions (left_right, nearer_gripper, instruction; `NAMING_TYPES`) name it --
`VQASample.heldout_question` is True for those. The even held-out scenes ask the training question forms
about new scenes. So the held-out split measures two things, reported apart by the evaluation: new scenes x
seen question forms (`heldout_question` False), and new scenes x new referent combinations (True).

On disk (deterministic given the parameters; `meta.json` records them):

    root/meta.json                  generator, format_version, parameters, counts per split
    root/{train,heldout}/images.npz "images": (num_scenes, S, S, 3) uint8
    root/{train,heldout}/samples.jsonl  one JSON object per sample: scene, caption, question, answer,
                                    question_type, attributes, heldout_question

Text formats (training and scoring use exactly these): the Qwen chat template of the VLA prompt, without
its system turn, with the question (or `CAPTION_REQUEST`) as the user turn; the target is the answer (or
caption) followed by `<|im_end|>`. See `prompt_for`, `caption_prompt` and `target_text`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.constants import IM_END, IM_START
from prismatic.vla.datasets.synthetic import FINGER_OPEN, PALETTE, SHAPES, _place_objects, _render

logger = logging.getLogger(__name__)

COLOURS: tuple[str, ...] = tuple(name for name, _ in PALETTE)
COUNT_WORDS: tuple[str, ...] = ("two", "three", "four")
MIN_OBJECTS, MAX_OBJECTS = 2, 2 + len(COUNT_WORDS) - 1

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "left_right", "nearer_gripper", "instruction")
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "count": COUNT_WORDS,
    "left_right": ("left", "right"),
    "nearer_gripper": ("yes", "no"),
    "instruction": ("yes", "no"),
}
# Question types whose text names an object by colour and shape (the ones held-out combinations apply to).
NAMING_TYPES: tuple[str, ...] = ("left_right", "nearer_gripper", "instruction")
# (colour, shape) combinations never named in a training question: one per colour group, both shapes used.
HELDOUT_COMBINATIONS: tuple[tuple[str, str], ...] = (("red", "ball"), ("yellow", "cube"), ("orange", "ball"),
                                                     ("cyan", "cube"))

# Integer scene labels (class indices) for linear probes; every sample carries all of them.
ATTRIBUTE_CLASSES: dict[str, int] = {
    "count": len(COUNT_WORDS),  # index into COUNT_WORDS (number of objects - MIN_OBJECTS)
    "leftmost_colour": len(COLOURS),  # index into COLOURS of the object with the smallest x
    "leftmost_shape": len(SHAPES),  # index into SHAPES of that object
    "nearest_colour": len(COLOURS),  # index into COLOURS of the object nearest the gripper (xy distance)
    "nearest_shape": len(SHAPES),  # index into SHAPES of that object
    "gripper_left": 2,  # 1 if the gripper is over the left half of the table (x < 0), else 0
}

SPLITS: tuple[str, ...] = ("train", "heldout")
CAPTION_REQUEST = "Describe the scene."
MIN_X_GAP = 0.12  # workspace units (the table spans [-1, 1]); objects are 0.3 wide
MIN_SIDE_GAP = 0.06
MIN_DISTANCE_GAP = 0.1
FORMAT_VERSION = 2
META_FILE, IMAGES_FILE, SAMPLES_FILE = "meta.json", "images.npz", "samples.jsonl"
GENERATOR = "prismatic.vla.datasets.vqa"
_SPLIT_STREAM = {"train": 0, "heldout": 1}  # separate random streams: held-out scenes are new scenes


@dataclass(frozen=True)
class VQASample:
    # (S, S, 3) uint8 top-down view of the scene (S = the preset's vision.image_size); shared by a scene's samples.
    image: np.ndarray
    # A full-sentence description of the scene (the same for every sample of a scene).
    caption: str
    question: str
    # Short answer, one of ANSWERS[question_type].
    answer: str
    question_type: str
    # Integer scene labels (keys and class counts: ATTRIBUTE_CLASSES).
    attributes: dict[str, int]
    # Index of the scene within its split (samples of one scene share image, caption and attributes).
    scene_id: int = 0
    # True when the question names a held-out (colour, shape) combination (held-out split only).
    heldout_question: bool = False


def _user_turn(user: str) -> str:
    # The VLA prompt's chat template without its system turn: that turn is the same ~40 tokens in every example
    # and would double the sequence length (and the CPU time) of pretraining and probing.
    return f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


def prompt_for(sample: VQASample) -> str:
    """The prompt of a VQA sample (the answer follows it as `target_text(sample.answer)`)."""
    return _user_turn(sample.question)


def caption_prompt() -> str:
    """The prompt that asks for a caption (the caption follows it as `target_text(sample.caption)`)."""
    return _user_turn(CAPTION_REQUEST)


def target_text(text: str) -> str:
    """The completion that is trained / scored after a prompt: the answer or caption, then <|im_end|>."""
    return f"{text}{IM_END}"


# ---------------------------------------------------------------------------------------------------------
# Scene generation
# ---------------------------------------------------------------------------------------------------------
def _name(obj: dict) -> str:
    return f"{obj['colour']} {obj['shape']}"


def _is_heldout(obj: dict) -> bool:
    return (obj["colour"], obj["shape"]) in HELDOUT_COMBINATIONS


def is_compositional(split: str, scene: int) -> bool:
    """Whether a scene names a held-out (colour, shape) combination in its questions: odd held-out scenes."""
    return split == "heldout" and scene % 2 == 1


def _draw_scene(rng: np.random.Generator, compositional: bool) -> tuple[list[dict], np.ndarray]:
    """Objects (colour, shape, xy) and the gripper position of one scene (see module docstring)."""
    # The count is drawn once, outside the rejection loop, so counts stay uniform (crowded scenes are
    # rejected more often).
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(1000):
        colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=count, replace=False)]
        shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=count)]
        if compositional:
            # Object 0 is a held-out combination (its colour replaces one not already used by the others).
            combo = HELDOUT_COMBINATIONS[int(rng.integers(len(HELDOUT_COMBINATIONS)))]
            if combo[0] in colours[1:]:
                continue
            colours[0], shapes[0] = combo
        objects = [{"colour": c, "shape": s} for c, s in zip(colours, shapes)]
        if not compositional and sum(not _is_heldout(o) for o in objects) < 2:
            continue  # questions of the training forms need two nameable objects
        xy = _place_objects(rng, count)
        eef = np.array([*rng.uniform(-0.9, 0.9, 2), rng.uniform(0.3, 1.0)], np.float32)
        x_gaps = np.abs(xy[:, None, 0] - xy[None, :, 0]) + np.eye(count)
        dist = np.linalg.norm(xy - eef[None, :2], axis=1)
        d_gaps = np.abs(dist[:, None] - dist[None]) + np.eye(count)
        if (x_gaps.min() < MIN_X_GAP or d_gaps.min() < MIN_DISTANCE_GAP or abs(eef[0]) < 0.05
                or np.abs(xy[:, 0]).min() < MIN_SIDE_GAP):
            continue
        for obj, p in zip(objects, xy):
            obj["xy"] = p.astype(np.float32)
        return objects, eef
    raise RuntimeError("could not draw an unambiguous scene in 1000 tries")


def _render_scene(objects: list[dict], eef: np.ndarray, image_size: int) -> np.ndarray:
    drawn = [{"xy": o["xy"], "z": 0.0, "shape": o["shape"],
              "rgb": np.array(dict(PALETTE)[o["colour"]], np.float32)} for o in objects]
    return _render(drawn, eef, FINGER_OPEN, np.zeros(2, np.float32), 1.0, image_size, wrist=False)


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _list_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _caption(objects: list[dict], eef: np.ndarray) -> str:
    by_x = sorted(objects, key=lambda o: o["xy"][0])
    nearest = min(objects, key=lambda o: float(np.linalg.norm(o["xy"] - eef[:2])))
    side = "left" if eef[0] < 0 else "right"
    return (f"There are {COUNT_WORDS[len(objects) - MIN_OBJECTS]} objects on the table. From left to right: "
            f"{_list_words([_with_article(_name(o)) for o in by_x])}. The gripper is over the {side} side, nearest the "
            f"{_name(nearest)}.")


def _attributes(objects: list[dict], eef: np.ndarray) -> dict[str, int]:
    leftmost = min(objects, key=lambda o: o["xy"][0])
    nearest = min(objects, key=lambda o: float(np.linalg.norm(o["xy"] - eef[:2])))
    return {
        "count": len(objects) - MIN_OBJECTS,
        "leftmost_colour": COLOURS.index(leftmost["colour"]),
        "leftmost_shape": SHAPES.index(leftmost["shape"]),
        "nearest_colour": COLOURS.index(nearest["colour"]),
        "nearest_shape": SHAPES.index(nearest["shape"]),
        "gripper_left": int(eef[0] < 0),
    }


def _questions(rng: np.random.Generator, objects: list[dict], eef: np.ndarray,
               compositional: bool) -> list[tuple[str, str, str, bool]]:
    """(question_type, question, answer, heldout_question) for every type in QUESTION_TYPES."""
    # Objects a naming question may pick first: the held-out object (compositional scene) or any nameable one.
    nameable = [o for o in objects if not _is_heldout(o)]
    firsts = [objects[0]] if compositional else nameable
    out = []
    by_x = sorted(objects, key=lambda o: o["xy"][0])
    end = "leftmost" if rng.random() < 0.5 else "rightmost"
    pick = by_x[0] if end == "leftmost" else by_x[-1]
    out.append(("colour", f"what colour is the {end} object?", pick["colour"], False))
    pick = objects[0] if compositional else objects[int(rng.integers(len(objects)))]
    out.append(("shape", f"what shape is the {pick['colour']} object?", pick["shape"], False))
    out.append(("count", "how many objects are on the table?", COUNT_WORDS[len(objects) - MIN_OBJECTS], False))

    def pair() -> tuple[dict, dict]:
        a = firsts[int(rng.integers(len(firsts)))]
        others = [o for o in (objects if compositional else nameable) if o is not a]
        b = others[int(rng.integers(len(others)))]
        return (a, b) if rng.random() < 0.5 else (b, a)  # the held-out object is named first or second

    # Which half of the table one named object is on (a pairwise "left of" question stayed at chance on training
    # scenes after 8000 steps at the tiny size: two bindings and a comparison; this one needs one binding).
    a = firsts[int(rng.integers(len(firsts)))]
    answer = "left" if a["xy"][0] < 0 else "right"
    out.append(("left_right", f"is the {_name(a)} on the left or the right side of the table?", answer,
                compositional))
    a, b = pair()
    nearer = np.linalg.norm(a["xy"] - eef[:2]) < np.linalg.norm(b["xy"] - eef[:2])
    out.append(("nearer_gripper", f"is the {_name(a)} nearer the gripper than the {_name(b)}?",
                "yes" if nearer else "no", compositional))
    present = {(o["colour"], o["shape"]) for o in objects}
    if rng.random() < 0.5:
        target = (objects[0]["colour"], objects[0]["shape"]) if compositional else \
            (lambda o: (o["colour"], o["shape"]))(nameable[int(rng.integers(len(nameable)))])
        answer = "yes"
    else:
        pool = list(HELDOUT_COMBINATIONS) if compositional else \
            [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBINATIONS]
        absent = [combo for combo in pool if combo not in present]
        # Half of the negatives are hard: a colour that is in the scene, with the other shape.
        hard = [combo for combo in absent if combo[0] in {c for c, _ in present}]
        choices = hard if hard and rng.random() < 0.5 else absent
        target, answer = choices[int(rng.integers(len(choices)))], "no"
    out.append(("instruction", f"does the instruction 'pick up the {target[0]} {target[1]}' fit this scene?",
                answer, compositional))
    return out


def _generate_split(split: str, num_scenes: int, image_size: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    images = np.zeros((num_scenes, image_size, image_size, 3), np.uint8)
    rows = []
    for scene in range(num_scenes):
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], scene])
        compositional = is_compositional(split, scene)
        objects, eef = _draw_scene(rng, compositional)
        images[scene] = _render_scene(objects, eef, image_size)
        caption, attributes = _caption(objects, eef), _attributes(objects, eef)
        for question_type, question, answer, heldout_question in _questions(rng, objects, eef, compositional):
            rows.append({"scene": scene, "caption": caption, "question": question, "answer": answer,
                         "question_type": question_type, "attributes": attributes,
                         "heldout_question": heldout_question})
    return images, rows


# ---------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------
def _params(num_train_scenes: int, num_heldout_scenes: int, image_size: int, seed: int) -> dict:
    return {"generator": GENERATOR, "format_version": FORMAT_VERSION, "num_train_scenes": num_train_scenes,
            "num_heldout_scenes": num_heldout_scenes, "image_size": image_size, "seed": seed}


def _validate(num_train_scenes: int, num_heldout_scenes: int, image_size: int) -> None:
    if num_train_scenes < 1:
        raise ValueError(f"num_train_scenes must be >= 1, got {num_train_scenes}")
    if num_heldout_scenes < 1:
        raise ValueError(f"num_heldout_scenes must be >= 1, got {num_heldout_scenes}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")


def _read_meta(root: Path) -> dict | None:
    path = root / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def write_vqa_dataset(root: str | Path, *, num_train_scenes: int, num_heldout_scenes: int, image_size: int,
                      seed: int = 0) -> Path:
    """Generate both splits into `root` (written to a temporary sibling, then renamed). Returns `root`.

    An existing `root` is replaced only if it is a VQA dataset written here (has our meta.json) or empty;
    anything else is an error, so a wrong path never deletes user data.
    """
    _validate(num_train_scenes, num_heldout_scenes, image_size)
    root = Path(root)
    if root.exists():
        meta = _read_meta(root) if root.is_dir() else None
        if not root.is_dir() or (any(root.iterdir()) and (meta is None or meta.get("generator") != GENERATOR)):
            raise FileExistsError(f"{root} exists and is not a VQA dataset written by {GENERATOR}; "
                                  "use another root")
    params = _params(num_train_scenes, num_heldout_scenes, image_size, seed)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, num_scenes in (("train", num_train_scenes), ("heldout", num_heldout_scenes)):
        images, rows = _generate_split(split, num_scenes, image_size, seed)
        (tmp / split).mkdir(parents=True)
        np.savez_compressed(tmp / split / IMAGES_FILE, images=images)
        with open(tmp / split / SAMPLES_FILE, "w") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        counts[split] = {"scenes": num_scenes, "samples": len(rows)}
    meta = {**params, "counts": counts, "question_types": list(QUESTION_TYPES),
            "answers": {k: list(v) for k, v in ANSWERS.items()}, "attribute_classes": ATTRIBUTE_CLASSES,
            "heldout_combinations": [list(c) for c in HELDOUT_COMBINATIONS]}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    logger.info("wrote VQA dataset to %s (%s)", root, counts)
    return root


def ensure_vqa_dataset(root: str | Path, *, image_size: int, num_train_scenes: int = 2000,
                       num_heldout_scenes: int = 300, seed: int = 0) -> Path:
    """Return `root` if it holds a VQA dataset with these parameters, else (re)generate it there."""
    _validate(num_train_scenes, num_heldout_scenes, image_size)
    root = Path(root)
    meta = _read_meta(root) if root.is_dir() else None
    wanted = _params(num_train_scenes, num_heldout_scenes, image_size, seed)
    if meta is not None and {k: meta.get(k) for k in wanted} == wanted and all(
            (root / split / name).is_file() for split in SPLITS for name in (IMAGES_FILE, SAMPLES_FILE)):
        return root
    if meta is not None:
        logger.info("VQA dataset at %s has other parameters; regenerating it with %s", root, wanted)
    return write_vqa_dataset(root, num_train_scenes=num_train_scenes, num_heldout_scenes=num_heldout_scenes,
                             image_size=image_size, seed=seed)


def load_vqa_split(root: str | Path, split: str) -> list[VQASample]:
    """All samples of `split` ("train" or "heldout"), in file order (scene by scene, QUESTION_TYPES order)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not (root / META_FILE).is_file():
        raise FileNotFoundError(f"no VQA dataset at {root} (missing {root / META_FILE}); create one with "
                                "write_vqa_dataset / ensure_vqa_dataset")
    meta = _read_meta(root)
    if meta.get("generator") != GENERATOR or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / META_FILE} is not a VQA dataset of format {FORMAT_VERSION} "
                         f"(generator {meta.get('generator')!r}, format {meta.get('format_version')!r})")
    images_path, samples_path = root / split / IMAGES_FILE, root / split / SAMPLES_FILE
    for path in (images_path, samples_path):
        if not path.is_file():
            raise FileNotFoundError(f"VQA split {split!r} is incomplete: {path} is missing")
    with np.load(images_path) as data:
        images = data["images"]
    size = meta["image_size"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{images_path}: expected uint8 (N, {size}, {size}, 3) images, got {images.dtype} "
                         f"{images.shape}")
    samples = []
    with open(samples_path) as f:
        for line_no, line in enumerate(f, 1):
            row = json.loads(line)
            scene = row["scene"]
            if not 0 <= scene < len(images):
                raise ValueError(f"{samples_path}:{line_no}: scene {scene} out of range [0, {len(images)})")
            if row["answer"] not in ANSWERS.get(row["question_type"], ()):
                raise ValueError(f"{samples_path}:{line_no}: answer {row['answer']!r} is not in the answer set of "
                                 f"question type {row['question_type']!r}")
            samples.append(VQASample(image=images[scene], caption=row["caption"], question=row["question"],
                                     answer=row["answer"], question_type=row["question_type"],
                                     attributes=dict(row["attributes"]), scene_id=scene,
                                     heldout_question=bool(row["heldout_question"])))
    return samples
