"""Resume a run named by one of its checkpoint directories (upstream's resume commands).

Upstream resumes with `--config_file_path runs/<run id>--<step>_chkpt --resume True --resume_step <step>` (and
`--resum_vla_path` for the weights). Here that directory identifies the run: its run root, its run id and its
step. The run continues with the config it was trained with (the checkpoint's finetune_config.json); the flags
given on the command line override it (typically --max_steps; must-match flags that differ are the usual
resume error, resume.RESUME_MUST_MATCH in train.py).

    python vla-scripts/finetune.py --config_file_path "runs/my-run--10000_chkpt" --resume True \
        --resume_step 10000 --max_steps 20000 --use_craft True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

from prismatic.constants import FINETUNE_CONFIG_FILE
from prismatic.training.config import FinetuneConfig

log = logging.getLogger(__name__)

_CHKPT_NAME = re.compile(r"^(?P<run_id>.+)--(?P<step>\d+)_chkpt$")  # checkpoint.checkpoint_dir's naming
# Flags that locate the run: taken from the directory, never from the checkpoint's config or the command.
_LOCATION = ("config_file_path", "resum_vla_path", "run_root_dir", "run_id_override", "resume", "resume_step")


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    path: Path  # the checkpoint directory
    run_root_dir: Path  # its parent
    run_id: str
    step: int


def checkpoint_location(value: str | None) -> CheckpointLocation | None:
    """The run behind `value` if it is one of this stack's checkpoint directories (named
    `<run id>--<step>_chkpt`, holding finetune_config.json), else None."""
    if not value:
        return None
    path = Path(value)
    m = _CHKPT_NAME.match(path.name)
    if m is None or not (path / FINETUNE_CONFIG_FILE).is_file():
        return None
    return CheckpointLocation(path=path, run_root_dir=path.parent, run_id=m.group("run_id"), step=int(m.group("step")))


def check_checkpoint_path(flag: str, value: str | None) -> None:
    """With --resume True, a path named like a checkpoint directory must be one (a clear error, not a
    missing-base-VLM one, when a copied command points at a run that is not there)."""
    if not value or not _CHKPT_NAME.match(Path(value).name) or checkpoint_location(value) is not None:
        return
    what = "does not exist" if not Path(value).exists() else f"has no {FINETUNE_CONFIG_FILE}"
    raise ValueError(f"{flag} {value} {what}: with --resume True it names the checkpoint directory of the run to "
                     f"continue (<run_root_dir>/<run id>--<step>_chkpt)")


def resume_source(cfg: FinetuneConfig) -> CheckpointLocation | None:
    """The checkpoint directory a `--resume True` command names (--resum_vla_path, else --config_file_path), if any."""
    if not cfg.resume:
        return None
    if cfg.resum_vla_path is not None:
        found = checkpoint_location(cfg.resum_vla_path)
        if found is None:
            raise FileNotFoundError(f"--resum_vla_path {cfg.resum_vla_path} is not a checkpoint directory of this "
                                    f"stack (expected <run_root_dir>/<run id>--<step>_chkpt with {FINETUNE_CONFIG_FILE})")
        return found
    return checkpoint_location(cfg.config_file_path)


def given_flags(argv: list[str]) -> set[str]:
    """Names of the flags on a command line (`--name value` or `--name=value`), plus the keys of a
    `--config_path` YAML file: what the user set, as opposed to defaults."""
    names = set()
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0])
            if arg == "--config_path" and i + 1 < len(argv):
                import yaml

                loaded = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
                names.update(loaded if isinstance(loaded, dict) else ())
    return names


def config_for_checkpoint_dir(cfg: FinetuneConfig, given: set[str]) -> FinetuneConfig:
    """`cfg` unchanged unless it resumes from a checkpoint directory; then the checkpoint's config with the
    flags in `given` (from the command line) taking cfg's values, located at that directory's run and step."""
    source = resume_source(cfg)
    if source is None:
        return cfg
    if cfg.resume_step is not None and cfg.resume_step != source.step:
        raise ValueError(f"--resume_step {cfg.resume_step} contradicts the checkpoint directory {source.path} "
                         f"(step {source.step}); pass --resume_step {source.step} or name that step's directory")
    for name, value in (("run_root_dir", str(source.run_root_dir)), ("run_id_override", source.run_id)):
        if name in given and str(getattr(cfg, name)) != value:
            raise ValueError(f"--{name} {getattr(cfg, name)} contradicts the checkpoint directory {source.path} "
                             f"({name} {value}); drop --{name}")
    try:
        saved = json.loads((source.path / FINETUNE_CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the run's config {source.path / FINETUNE_CONFIG_FILE}: {e}") from None
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    dropped = sorted(set(saved) - fields)
    if dropped:
        log.warning("%s: ignoring flags this version does not have: %s", source.path / FINETUNE_CONFIG_FILE, dropped)
    merged = {k: v for k, v in saved.items() if k in fields and k not in _LOCATION}
    merged.update({k: getattr(cfg, k) for k in given if k in fields and k not in _LOCATION})
    merged.update(run_root_dir=str(source.run_root_dir), run_id_override=source.run_id, resume=True,
                  resume_step=source.step, config_file_path=saved.get("config_file_path"), resum_vla_path=None)
    log.info("resuming run %s from %s (step %d) with its own config; from the command line: %s", source.run_id,
             source.path, source.step, ", ".join(sorted(k for k in given if k in fields and k not in _LOCATION))
             or "nothing")
    return FinetuneConfig(**merged)
