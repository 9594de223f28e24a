"""Dataset specs: how one RLDS dataset maps onto (images, proprio, action, instruction).

Adding a dataset is one entry:

    register_dataset(DatasetSpec(name="libero_object_scripted"))       # LIBERO layout, default everything

A spec names the RLDS keys and the small standardisation the pipeline applies before anything else
(`traj_transforms.standardize_trajectory`):
    proprio = concat(state[s0:e0], state[s1:e1], ...)      LIBERO: EEF pos + axis-angle (6) + gripper qpos (2)
    action  = action[:, :-1] ++ gripper_transform(action[:, -1:])
              LIBERO ("clip_invert"): clip to [0, 1], then 1 - g, so env -1 (open) / +1 (close) becomes
              1 = open / 0 = close (upstream `libero_dataset_transform`, facts §2.9).

Names resolve in this order: an explicit entry in `DATASET_REGISTRY`, a mixture in `MIXTURE_REGISTRY`, then
the naming rules for generated data: a name starting with `libero_synthetic` (what
`make_synthetic_libero_rlds.py --name` writes) or of the form `libero_*_scripted` (what
`generate_libero_demos.py` writes, e.g. `libero_object_scripted`) is a LIBERO-layout dataset. Anything else is
an error listing the known names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Names with these prefixes resolve to a LIBERO-layout spec without an explicit entry (generated datasets).
LIBERO_STYLE_PREFIXES = ("libero_synthetic",)
# ... and scripted-demo datasets: "libero_" + anything + this suffix (optionally followed by more text).
SCRIPTED_PREFIX, SCRIPTED_MARK = "libero_", "_scripted"

GRIPPER_TRANSFORMS = ("none", "clip_invert")
ACTION_ENCODINGS = ("EEF_POS",)


@dataclass(frozen=True)
class DatasetSpec:
    # Dataset name = directory name under data_root_dir (data_root_dir/<name>/<version>/).
    name: str
    # observation keys of the camera images, third-person first, then wrist (model image order).
    image_keys: tuple[str, ...] = ("image", "wrist_image")
    # observation key of the low-dimensional robot state the proprio is sliced from.
    state_key: str = "state"
    # [start, stop) slices of the state concatenated into proprio (None = to the end).
    proprio_slices: tuple[tuple[int, int | None], ...] = ((0, 6), (-2, None))
    # step keys of the action and the language instruction.
    action_key: str = "action"
    language_key: str = "language_instruction"
    # Action encoding (EEF_POS: delta EEF pose + absolute gripper, the gripper is the last dimension).
    action_encoding: str = "EEF_POS"
    # How the raw gripper action (last dim) is mapped; see module docstring.
    gripper_transform: str = "clip_invert"
    # Which action dims BOUNDS_Q99 normalises (False = passed through; the gripper is already in [0, 1]).
    action_normalization_mask: tuple[bool, ...] = (True,) * 6 + (False,)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DatasetSpec.name must be non-empty")
        check_dataset_name(self.name)
        if not self.image_keys:
            raise ValueError(f"DatasetSpec({self.name}).image_keys must name at least one camera")
        if not self.proprio_slices:
            raise ValueError(f"DatasetSpec({self.name}).proprio_slices must be non-empty")
        if self.gripper_transform not in GRIPPER_TRANSFORMS:
            raise ValueError(
                f"DatasetSpec({self.name}).gripper_transform={self.gripper_transform!r}; choose from {GRIPPER_TRANSFORMS}"
            )
        if self.action_encoding not in ACTION_ENCODINGS:
            raise ValueError(
                f"DatasetSpec({self.name}).action_encoding={self.action_encoding!r}; choose from {ACTION_ENCODINGS}"
            )

    @property
    def action_dim(self) -> int:
        return len(self.action_normalization_mask)

    def proprio_dim(self, state_dim: int) -> int:
        """Width of the proprio vector built from a state of `state_dim` entries."""
        return sum(len(range(state_dim)[slice(start, stop)]) for start, stop in self.proprio_slices)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def libero_spec(name: str) -> DatasetSpec:
    """The LIBERO RLDS layout (openvla/modified_libero_rlds; facts §6.1) under `name`."""
    return DatasetSpec(name=name)


DATASET_REGISTRY: dict[str, DatasetSpec] = {}
# mixture name -> ((dataset name, sampling weight multiplier), ...); weights are further scaled by each
# dataset's number of transitions.
MIXTURE_REGISTRY: dict[str, tuple[tuple[str, float], ...]] = {}


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add a dataset spec. Registering a different spec under a taken name is an error unless `overwrite`."""
    if spec.name in MIXTURE_REGISTRY:
        raise ValueError(f"dataset name {spec.name!r} is already a mixture name")
    existing = DATASET_REGISTRY.get(spec.name)
    if existing is not None and existing != spec and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered with a different spec: {existing}")
    DATASET_REGISTRY[spec.name] = spec
    return spec


def register_libero_dataset(name: str) -> DatasetSpec:
    """Register `name` with the LIBERO layout (e.g. a dataset written by `rlds_writer.write_rlds_dataset`)."""
    return register_dataset(libero_spec(name))


def register_mixture(name: str, members: tuple[tuple[str, float], ...]) -> None:
    """Add a mixture of registered datasets with per-dataset weight multipliers."""
    if name in DATASET_REGISTRY:
        raise ValueError(f"mixture name {name!r} is already a dataset name")
    if not members:
        raise ValueError(f"mixture {name!r} has no members")
    for member, weight in members:
        get_dataset_spec(member)
        if weight <= 0:
            raise ValueError(f"mixture {name!r}: weight of {member!r} must be positive, got {weight}")
    MIXTURE_REGISTRY[name] = tuple(members)


def known_dataset_names() -> list[str]:
    return (sorted(DATASET_REGISTRY) + sorted(MIXTURE_REGISTRY) + [f"{p}*" for p in LIBERO_STYLE_PREFIXES]
            + [f"{SCRIPTED_PREFIX}*{SCRIPTED_MARK}*"])


def _is_generated_libero_name(name: str) -> bool:
    if name.startswith(LIBERO_STYLE_PREFIXES):
        return True
    return name.startswith(SCRIPTED_PREFIX) and SCRIPTED_MARK in name[len(SCRIPTED_PREFIX) - 1:]


def check_dataset_name(name: str) -> None:
    """A dataset name is a directory under data_root_dir: one plain name, never a path that leaves it."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"dataset name {name!r} must be a plain directory name (no '/', '\\' or leading '.')")


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a single dataset (not a mixture); unknown names are an error listing the known ones."""
    check_dataset_name(name)
    if name in DATASET_REGISTRY:
        return DATASET_REGISTRY[name]
    if _is_generated_libero_name(name):
        return libero_spec(name)
    if name in MIXTURE_REGISTRY:
        raise ValueError(f"{name!r} is a mixture, not a single dataset; use resolve_dataset_mixture")
    raise ValueError(f"unknown dataset name {name!r}; known: {', '.join(known_dataset_names())}")


def resolve_dataset_mixture(name: str) -> list[tuple[DatasetSpec, float]]:
    """(spec, weight multiplier) for every dataset behind `name` (a single dataset gives one entry)."""
    if name in MIXTURE_REGISTRY:
        return [(get_dataset_spec(member), weight) for member, weight in MIXTURE_REGISTRY[name]]
    return [(get_dataset_spec(name), 1.0)]


# ---- the registered datasets ----
LIBERO_SUITES = ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops")
for _suite in LIBERO_SUITES:
    register_libero_dataset(_suite)
register_libero_dataset("libero_synthetic")
# oxe/mixtures.py: the four suites with equal multipliers (then weighted by transitions).
register_mixture("libero_4_task_suites_no_noops", tuple((suite, 1.0) for suite in LIBERO_SUITES))
