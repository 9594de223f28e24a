"""Validating doc commands without running them, and checking what executed doc commands produced.

    validate_command(command, sandbox)     a non-executed command: parse / dry-run it (see doc_commands.py)
    check_executed(command, proc, sandbox) an executed scenario command: the outputs it promises exist

Parsing uses the project's own parsers (draccus against FinetuneConfig / EvalConfig, the scripts'
argparse parsers, torchrun's parser), so a doc command is valid exactly when the real CLI accepts it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tests.docs.doc_commands import (
    DEMOS_SCRIPT,
    ENV_ASSIGNMENT_RE,
    FINETUNE_SCRIPT,
    MODEL_SUMMARY_SCRIPT,
    REPO,
    STANDARD_ENV_VARS,
    SYNTHETIC_SCRIPT,
    DocCommand,
    ShellCommand,
    classify,
    powershell_to_bash,
    python_target,
    run_shell,
    script_args,
    subprocess_env,
)

# ---------------------------------------------------------------------------------------------------------
# parsing the project's CLIs without running them
# ---------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_argparse_main(main, argv: list[str]) -> argparse.Namespace:
    """The namespace `main(argv)` parses, without running the rest of `main` (bad flags: SystemExit 2)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.namespace
    raise AssertionError(f"{main.__module__}.main did not parse its arguments")


def load_script(relative: str):
    """Import a script of the repository (e.g. vla-scripts/make_synthetic_libero_rlds.py) as a module."""
    path = REPO / relative
    name = "doc_script_" + re.sub(r"\W", "_", relative)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _placeholder_dirs(sandbox: Path, args: list[str], flags: tuple[str, ...]) -> None:
    """Create the directories real-size commands point at (downloads) so path checks in configs pass."""
    for flag in flags:
        if flag in args:
            value = args[args.index(flag) + 1]
            if not Path(value).is_absolute():
                (sandbox / value).mkdir(parents=True, exist_ok=True)


def parse_finetune_args(args: list[str], sandbox: Path):
    """FinetuneConfig from fine-tuning flags (draccus; unknown flags, bad values and __post_init__ errors
    raise). Relative paths resolve in `sandbox`; --vlm_path and --probe_data get placeholder directories there."""
    import draccus

    from prismatic.training.config import FinetuneConfig

    _placeholder_dirs(sandbox, args, ("--vlm_path", "--probe_data"))
    if "--probe_data" in args:  # the config checks it is a VQA / caption set: its meta.json marks one
        probe_data = Path(args[args.index("--probe_data") + 1])
        meta = (probe_data if probe_data.is_absolute() else sandbox / probe_data) / "meta.json"
        if not meta.exists():
            meta.write_text("{}")
    config_path = None
    if "--config_path" in args:
        k = args.index("--config_path")
        config_path, args = args[k + 1], args[:k] + args[k + 2:]
    with chdir(sandbox):
        return draccus.parse(FinetuneConfig, config_path=config_path, args=args, exit_on_error=False)


def _parse_pretrain_args(args: list[str], sandbox: Path):
    import draccus

    from prismatic.training.vlm_pretrain import PretrainConfig

    with chdir(sandbox):
        return draccus.parse(PretrainConfig, args=args, exit_on_error=False)


def parse_eval_args(args: list[str], sandbox: Path):
    import draccus

    from prismatic.eval.config import EvalConfig

    with chdir(sandbox):
        return draccus.parse(EvalConfig, args=args, exit_on_error=False)


def _validate_pip_install(argv: list[str]) -> None:
    """`[cd DIR &&] pip install (-e PATH | -r FILE | -c FILE)...` from the repository root: every PATH is an
    installable project (pyproject.toml with [project]) and every FILE a readable requirements file. The
    documented install path itself runs in a fresh venv in tests/install/check_install.sh."""
    import tomllib

    from packaging.requirements import Requirement

    cwd = REPO
    if argv[0] == "cd":
        cwd = REPO / argv[1]
        if not cwd.is_dir():
            raise AssertionError(f"cd {argv[1]}: no such directory in the repository")
        argv = argv[3:]
    args = argv[2:]
    if not args:
        raise AssertionError("pip install without a target")
    i = 0
    while i < len(args):
        flag = args[i]
        if flag in ("-e", "--editable") or not flag.startswith("-"):
            target = cwd / (args[i + 1] if flag.startswith("-") else flag)
            project = tomllib.loads((target / "pyproject.toml").read_text()).get("project")
            if not project or not project.get("name"):
                raise AssertionError(f"pip install {target}: pyproject.toml has no [project] name")
            i += 2 if flag.startswith("-") else 1
        elif flag in ("-r", "-c"):
            path = cwd / args[i + 1]
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    Requirement(line)  # raises on a malformed requirement
            i += 2
        else:
            raise AssertionError(f"pip install: the docs use only -e / -r / -c, got {flag!r}")


def parse_torchrun(argv: list[str]) -> argparse.Namespace:
    """torchrun's own parser (argv without the launcher: everything after `torchrun` / `-m torch.distributed.run`)."""
    from torch.distributed.run import get_args_parser

    return get_args_parser().parse_args(argv)


def makefile_targets() -> dict[str, list[str]]:
    """{target: recipe lines} of the Makefile."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if m:
            current = m.group(1)
            targets[current] = []
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


def known_env_vars() -> set[str]:
    """Environment variables the project reads (its source mentions them) plus a few standard ones."""
    names = set(STANDARD_ENV_VARS)
    sources = [REPO / "Makefile", *(REPO / "scripts").glob("*.sh")]
    for package in ("prismatic", "craft_experiments"):
        sources += list((REPO / package).rglob("*.py"))
    for path in sources:
        names |= set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", path.read_text(encoding="utf-8")))
    return names



# ---------------------------------------------------------------------------------------------------------
# validation (commands that are not executed)
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Validation:
    kind: str
    detail: str = ""


def _driver_dry_run(env: dict[str, str], argv: list[str], sandbox: Path) -> str:
    if "--dry-run" not in argv and "--dry_run" not in argv:
        argv = [*argv, "--dry-run"]
    proc = run_shell(shlex.join(argv), sandbox, timeout=120, extra_env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not proc.stdout.startswith("# Table"):
        raise AssertionError(f"{shlex.join(argv)}: unexpected dry-run output:\n{proc.stdout[:1000]}")
    return proc.stdout


def _check_env(env: dict[str, str]) -> None:
    unknown = sorted(set(env) - known_env_vars())
    if unknown:
        raise AssertionError(f"environment variable(s) {unknown} are not read anywhere in the project")


def validate_command(command: DocCommand, sandbox: Path) -> Validation:
    """Validate one non-executed doc command (see module docstring). Raises on any problem."""
    if command.language == "powershell":
        env, argv = powershell_to_bash(command.text)
        _check_env(env)
        _driver_dry_run(env, argv, sandbox)
        return Validation("driver (PowerShell twin, dry run through the bash script)")
    shell = ShellCommand.parse(command.text)
    _check_env(shell.env)
    argv = shell.argv
    kind = classify(argv)
    if kind == "make":
        targets = makefile_targets()
        for target in argv[1:] or ["setup"]:
            if target not in targets:
                raise AssertionError(f"make target {target!r} is not in the Makefile (targets: {sorted(targets)})")
            _validate_recipe(target, targets[target], sandbox)
        return Validation("make", ", ".join(argv[1:]))
    if kind == "export":
        pairs = [ENV_ASSIGNMENT_RE.match(token) for token in argv[1:]]
        if not pairs or not all(pairs):
            raise AssertionError(f"export must assign NAME=value, got {argv[1:]}")
        _check_env({m.group(1): m.group(2) for m in pairs})
        return Validation("export")
    if kind == "torchrun":
        launcher_args = argv[1:] if argv[0] == "torchrun" else argv[3:]
        ns = parse_torchrun(launcher_args)
        if ns.training_script != FINETUNE_SCRIPT:
            raise AssertionError(f"torchrun launches {ns.training_script!r}; the docs only launch {FINETUNE_SCRIPT}")
        cfg = parse_finetune_args(list(ns.training_script_args), sandbox)
        _require_real_size(cfg, command)
        return Validation("torchrun + FinetuneConfig", f"nproc_per_node={ns.nproc_per_node} nnodes={ns.nnodes}")
    if kind == "finetune":
        cfg = parse_finetune_args(script_args(argv), sandbox)
        _require_real_size(cfg, command)
        return Validation("FinetuneConfig")
    if kind == "eval":
        parse_eval_args(script_args(argv), sandbox)
        return Validation("EvalConfig")
    if kind == "driver":
        _driver_dry_run(shell.env, argv, sandbox)
        return Validation("driver dry run")
    if kind == "hf-download":
        _validate_hf_download(argv)
        return Validation("hf download --help")
    if kind == "pip-install":
        _validate_pip_install(argv)
        return Validation("pip install targets (the install itself: tests/install/check_install.sh)")
    if kind == "synthetic":
        parse_argparse_main(load_script(SYNTHETIC_SCRIPT).main, script_args(argv))
        return Validation("argparse")
    if kind == "demos":
        # The script's own parser + GenerationConfig validation (unknown suites / unsupported tasks exit 2).
        load_script(DEMOS_SCRIPT).parse_config(script_args(argv))
        return Validation("generate_libero_demos.parse_config")
    if kind == "log-parser":
        from craft_experiments.common_utils import log_parser

        parse_argparse_main(log_parser.main, script_args(argv))
        return Validation("argparse")
    if kind == "plots":
        from craft_experiments.common_utils import plots

        parse_argparse_main(plots.main, script_args(argv))
        return Validation("argparse")
    if kind == "argparse-script":  # scripts with main(argv) and argparse (benchmarks, the base-VLM writer)
        parse_argparse_main(load_script(python_target(argv)[1]).main, script_args(argv))
        return Validation("argparse")
    if kind == "gpu-check":  # the script prints its commands with --dry, running nothing
        proc = run_shell(shlex.join([*argv, "--dry", "--out", str(sandbox / "gpu-check-dry")]), sandbox, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} --dry failed: {proc.stderr[-1000:]}")
        return Validation("gpu_check.sh --dry")
    if kind == "pretrain-vlm":  # draccus PretrainConfig (unknown flags, bad values and __post_init__ errors raise)
        _parse_pretrain_args(script_args(argv), sandbox)
        return Validation("PretrainConfig")
    if kind == "model-summary":
        import draccus

        module = load_script(MODEL_SUMMARY_SCRIPT)
        draccus.parse(module.SummaryConfig, args=script_args(argv), exit_on_error=False)
        return Validation("SummaryConfig")
    raise AssertionError(f"unhandled kind {kind}")


def _require_real_size(cfg, command: DocCommand) -> None:
    """CPU-sized fine-tuning commands must be executed, not merely validated."""
    if cfg.model_preset in ("tiny", "mid"):
        raise AssertionError(f"{command.where}: a {cfg.model_preset}-preset fine-tune runs on a CPU, so the doc tests "
                             "must execute it: put its block under a `<!-- doc-test: ... -->` scenario")


def _validate_recipe(target: str, recipe: list[str], sandbox: Path) -> None:
    """Scripts a make target runs exist; a fine-tuning --config_path it passes parses."""
    for line in recipe:
        for path in re.findall(r"(?:vla-scripts|benchmarks|scripts)/[\w./-]+\.(?:py|sh)", line):
            if not (REPO / path).is_file():
                raise AssertionError(f"make {target}: runs {path}, which does not exist")
        m = re.search(r"vla-scripts/finetune\.py\s+--config_path\s+(\S+)", line)
        if m:
            parse_finetune_args(["--config_path", str(REPO / m.group(1))], sandbox)


@functools.cache
def _hf_download_options() -> frozenset[str]:
    proc = subprocess.run(["hf", "download", "--help"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"`hf download --help` failed: {proc.stderr[-1000:]}")
    return frozenset(re.findall(r"(--[a-z][a-z-]+)", proc.stdout))


def _validate_hf_download(argv: list[str]) -> None:
    options = _hf_download_options()
    used = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    unknown = sorted(set(used) - options)
    if unknown:
        raise AssertionError(f"`hf download` has no option(s) {unknown}")
    # The docs write the repository id first, then files / options.
    if len(argv) < 3 or not re.match(r"^[\w.-]+/[\w.-]+$", argv[2]):
        raise AssertionError(f"`hf download` needs a repository id owner/name first, got {argv[2:]}")


# ---------------------------------------------------------------------------------------------------------
# checks after executing a scenario command
# ---------------------------------------------------------------------------------------------------------

def check_executed(command: DocCommand, proc: subprocess.CompletedProcess, sandbox: Path) -> str:
    """Beyond exit code 0: the outputs each kind of command promises exist. Returns a short description."""
    shell = ShellCommand.parse(command.text)
    argv = shell.argv
    try:
        kind = classify(argv)
    except ValueError:
        return "shell"  # plain shell inside an executed block (e.g. cat): its exit code is the check
    if kind in ("finetune", "torchrun"):
        args = script_args(argv) if kind == "finetune" else list(parse_torchrun(argv[1:]).training_script_args)
        return _check_finetune_outputs(parse_finetune_args(args, sandbox), proc, sandbox)
    if kind == "eval":
        return _check_eval_outputs(parse_eval_args(script_args(argv), sandbox), sandbox)
    if kind == "synthetic":
        ns = parse_argparse_main(load_script(SYNTHETIC_SCRIPT).main, script_args(argv))
        info = sandbox / ns.out / ns.name / "1.0.0" / "dataset_info.json"
        assert info.is_file(), f"{command}: {info} was not written"
        return f"dataset {info.parent}"
    if kind == "pretrain-vlm":
        cfg = _parse_pretrain_args(script_args(argv), sandbox)
        out = sandbox / cfg.out_dir
        assert (out / "pretrain_metrics.json").is_file() and list((out / "checkpoints").glob("*.pt")), \
            f"{command}: no base-VLM directory (checkpoints/*.pt, pretrain_metrics.json) in {out}"
        assert "held-out VQA accuracy" in proc.stdout, f"{command}: no accuracy line:\n{proc.stdout[-2000:]}"
        return f"base VLM {cfg.out_dir}"
    if kind == "log-parser":
        assert "| Method |" in proc.stdout or "method,suite" in proc.stdout or r"\begin{tabular}" in proc.stdout, \
            f"{command}: no table in the output:\n{proc.stdout[:2000]}"
        return "table printed"
    if kind == "driver":
        assert proc.stdout.startswith("# Table"), f"{command}: unexpected output:\n{proc.stdout[:2000]}"
        return "driver"
    return kind


def _check_finetune_outputs(cfg, proc: subprocess.CompletedProcess, sandbox: Path) -> str:
    import json

    from prismatic.training.train import make_run_id

    run_id = make_run_id(cfg)
    ckpt = sandbox / cfg.run_root_dir / f"{run_id}--{cfg.max_steps}_chkpt"
    assert (ckpt / "finetune_config.json").is_file(), f"no final checkpoint {ckpt}"
    saved = json.loads((ckpt / "finetune_config.json").read_text())
    assert saved["max_steps"] == cfg.max_steps and saved["use_craft"] == cfg.use_craft, saved
    rows = [json.loads(line) for line in (sandbox / cfg.run_root_dir / run_id / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == cfg.max_steps, rows[-1:]
    if cfg.use_craft:
        assert {"retention_loss", "lambda", "conflict_ratio", "grad_cosine"} <= set(rows[-1]), rows[-1]
    if cfg.resume:
        assert "resuming from" in proc.stderr, f"--resume True but the run did not resume:\n{proc.stderr[-3000:]}"
    return f"checkpoint {ckpt.name}"


def _check_eval_outputs(cfg, sandbox: Path) -> str:
    import json

    assert cfg.run_id, "executed evaluation commands must pass --run_id (so the test knows the run directory)"
    run_dir = sandbox / cfg.local_log_dir / cfg.run_id
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line]
    expected = len(cfg.task_ids) * cfg.num_trials_per_task if cfg.task_ids else None
    if expected is not None:
        assert len({(r["task_id"], r["episode"]) for r in records}) == expected, records
    assert all(r["error"] is None for r in records), [r["error"] for r in records if r["error"]]
    log = (run_dir / f"{cfg.run_id}.txt").read_text().strip().splitlines()
    assert log[-1].startswith("Overall success rate:"), log[-3:]
    return f"evaluation {run_dir.name}: {len(records)} episode record(s)"
