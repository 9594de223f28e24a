"""The commands of the user docs (README.md, docs/*.md): extraction, sandbox, validation and execution.

Every fenced ```bash block is split into commands (continuation lines joined, comments dropped). A block is
either EXECUTED or VALIDATED:

    <!-- doc-test: quickstart-train -->        an HTML comment right before the fence names the scenario
    ```bash                                    that executes every command of the block, in order, in a
    python vla-scripts/finetune.py ...         sandbox directory (tests/docs/test_doc_scenarios.py)
    ```

A block without the comment is validated command by command (`doc_validation.validate_command`): fine-tuning and
evaluation flags through draccus against `FinetuneConfig` / `EvalConfig`, torchrun through torch's own
argument parser, experiment drivers by running them with `--dry-run`, `make` targets against the Makefile,
argparse CLIs by parsing their arguments, `hf download` against `hf download --help`. A command no
validator recognises is an error, so a new command cannot slip into the docs untested.

```powershell blocks are accepted for the experiment-driver wrappers only (`.ps1` twins of the `.sh`
scripts); they are validated by dry-running the same arguments through the bash twin.

The sandbox is a temporary directory that links the repository's script directories
(vla-scripts/, craft_experiments/, benchmarks/, scripts/) and the evaluation script, so commands run
verbatim, as a user types them in a checkout, while every output (data/, runs/, experiments/logs/,
outputs/) lands in the temporary directory instead of the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

# Linked into every sandbox (directories as a whole; the evaluation script alone, so that its default
# --local_log_dir ./experiments/logs stays inside the sandbox).
SANDBOX_DIR_LINKS = ("vla-scripts", "craft_experiments", "benchmarks", "scripts")
SANDBOX_FILE_LINKS = ("experiments/robot/libero/run_libero_eval.py",)

FINETUNE_SCRIPT = "vla-scripts/finetune.py"
EVAL_SCRIPT = "experiments/robot/libero/run_libero_eval.py"
SYNTHETIC_SCRIPT = "vla-scripts/make_synthetic_libero_rlds.py"
DEMOS_SCRIPT = "vla-scripts/generate_libero_demos.py"
MODEL_SUMMARY_SCRIPT = "vla-scripts/model_summary.py"
RANDOM_BASE_VLM_SCRIPT = "vla-scripts/make_random_base_vlm.py"
BENCH_REAL_SIZE_SCRIPT = "benchmarks/bench_real_size.py"
RETENTION_PROBE_SCRIPT = "vla-scripts/retention_probe.py"
PRETRAIN_VLM_SCRIPT = "vla-scripts/pretrain_tiny_vlm.py"
RETENTION_BENCH_SCRIPT = "benchmarks/retention_probe.py"
GPU_CHECK_SCRIPT = "benchmarks/gpu_check.sh"
DRIVER_MODULE = "craft_experiments.common_utils.experiments"
LOG_PARSER_MODULE = "craft_experiments.common_utils.log_parser"
PLOTS_MODULE = "craft_experiments.common_utils.plots"
DRIVER_SCRIPT_RE = re.compile(r"^craft_experiments/0\d_[a-z_]+/run_[a-z0-9_]+\.(sh|ps1)$")

TAG_RE = re.compile(r"^<!--\s*doc-test:\s*([a-z0-9-]+)\s*-->$")
FENCE_RE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
SHELL_LANGUAGES = {"sh", "shell", "console", "zsh", "bash-session", "shell-session"}  # must be written ```bash
ENV_ASSIGNMENT_RE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$", re.S)
# Environment variables a doc may set that are not read by the project's own code.
STANDARD_ENV_VARS = {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "NCCL_SOCKET_IFNAME",
                     "GLOO_SOCKET_IFNAME", "PYTHONPATH"}


@dataclass(frozen=True)
class DocCommand:
    doc: Path  # the markdown file
    line: int  # 1-based line of the command's first line
    text: str  # the command as the shell receives it (continuation lines joined)
    language: str  # "bash" or "powershell"
    scenario: str | None  # the doc-test tag of its block; None: validated, not executed

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(frozen=True)
class ShellCommand:
    """A bash command split into its leading environment assignments and argv."""

    env: dict[str, str]
    argv: list[str]

    @classmethod
    def parse(cls, text: str) -> ShellCommand:
        tokens = shlex.split(text, comments=True)
        env = {}
        while tokens and (m := ENV_ASSIGNMENT_RE.match(tokens[0])):
            env[m.group(1)] = m.group(2)
            tokens = tokens[1:]
        return cls(env, tokens)


# ---------------------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------------------

def _split_block(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line number, text) of each command of a block: continuations joined, blank and comment lines dropped."""
    commands, current, start = [], "", 0
    for number, raw in lines:
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        commands.append((start, current))
        current = ""
    if current:
        raise ValueError(f"line {start}: the block ends inside a continued command: {current!r}")
    return commands


def extract_commands(doc: Path) -> list[DocCommand]:
    """Every command of the ```bash / ```powershell blocks of one markdown file."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = FENCE_RE.match(lines[i])
        if not fence:
            i += 1
            continue
        language = fence.group(1)
        where = f"{doc.relative_to(REPO)}:{i + 1}"
        if not language:
            raise ValueError(f"{where}: a code fence without a language; write ```bash for commands, "
                             "```text for output/layouts")
        if language in SHELL_LANGUAGES:
            raise ValueError(f"{where}: write shell commands as ```bash (the doc tests only read ```bash)")
        # The tag, if any, is the closest non-blank line above the fence.
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        tag = TAG_RE.match(lines[j].strip()) if j >= 0 else None
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{where}: unterminated code fence")
        body = [(n + 1, lines[n]) for n in range(i + 1, end)]
        if tag and language != "bash":
            raise ValueError(f"{where}: doc-test tags are for ```bash blocks only")
        if language in ("bash", "powershell"):
            for number, text in _split_block(body):
                out.append(DocCommand(doc, number, text, language, tag.group(1) if tag else None))
        i = end + 1
    return out


def all_commands() -> list[DocCommand]:
    return [c for doc in DOC_FILES for c in extract_commands(doc)]


def scenario_commands(name: str) -> list[DocCommand]:
    return [c for c in all_commands() if c.scenario == name]


# ---------------------------------------------------------------------------------------------------------
# sandbox and subprocess environment
# ---------------------------------------------------------------------------------------------------------

def make_sandbox(path: Path) -> Path:
    """Link the repository's scripts into `path` (see module docstring)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in SANDBOX_DIR_LINKS:
        (path / name).symlink_to(REPO / name, target_is_directory=True)
    for name in SANDBOX_FILE_LINKS:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).symlink_to(REPO / name)
    return path


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This interpreter's venv first on PATH (`python`, `torchrun`, `hf`), the repository on PYTHONPATH,
    nothing downloaded, W&B off, one thread per process (the machines running the suite are small)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(extra or {})
    return env


def run_shell(text: str, cwd: Path, timeout: float, extra_env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """Run one doc command verbatim with bash in `cwd`."""
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + text], cwd=cwd, env=subprocess_env(extra_env),
                          capture_output=True, text=True, timeout=timeout)




# ---------------------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------------------

def python_target(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """("script", path, args) for `python path args`, ("module", name, args) for `python -m name args`."""
    if not argv or argv[0] not in ("python", "python3"):
        return None
    if len(argv) >= 3 and argv[1] == "-m":
        return "module", argv[2], argv[3:]
    if len(argv) >= 2 and not argv[1].startswith("-"):
        return "script", argv[1], argv[2:]
    return None


def classify(argv: list[str]) -> str:
    """The kind of a doc command; raises ValueError for one no validator knows."""
    if not argv:
        raise ValueError("empty command")
    head = argv[0]
    if head == "make":
        return "make"
    if head == "export":
        return "export"
    if head == "torchrun":
        return "torchrun"
    if head == "hf" and argv[1:2] == ["download"]:
        return "hf-download"
    pip = argv[3:] if head == "cd" and argv[2:3] == ["&&"] else argv
    if pip[:2] == ["pip", "install"] and pip[2:3] and pip[2] in ("-e", "-r", "-c"):  # the install path, not packages
        return "pip-install"
    if head == "bash" and len(argv) >= 2 and DRIVER_SCRIPT_RE.match(argv[1]):
        return "driver"
    if head == "bash" and argv[1:2] == [GPU_CHECK_SCRIPT]:
        return "gpu-check"
    target = python_target(argv)
    if target is not None:
        kind, name, _ = target
        if kind == "module" and name == "torch.distributed.run":
            return "torchrun"
        table = {("script", FINETUNE_SCRIPT): "finetune", ("script", EVAL_SCRIPT): "eval",
                 ("script", SYNTHETIC_SCRIPT): "synthetic", ("script", DEMOS_SCRIPT): "demos",
                 ("script", MODEL_SUMMARY_SCRIPT): "model-summary", ("script", PRETRAIN_VLM_SCRIPT): "pretrain-vlm", ("module", DRIVER_MODULE): "driver",
                 ("script", RANDOM_BASE_VLM_SCRIPT): "argparse-script", ("script", BENCH_REAL_SIZE_SCRIPT):
                 "argparse-script", ("script", RETENTION_PROBE_SCRIPT): "argparse-script",
                 ("script", RETENTION_BENCH_SCRIPT): "argparse-script",
                 ("module", LOG_PARSER_MODULE): "log-parser", ("module", PLOTS_MODULE): "plots",
                 ("script", "craft_experiments/common_utils/log_parser.py"): "log-parser"}
        if (kind, name) in table:
            return table[(kind, name)]
    raise ValueError(f"no doc-test validator knows this command: {shlex.join(argv)!r} (execute it in a "
                     "doc-test scenario, or teach tests/docs/doc_commands.py to validate it)")


def script_args(argv: list[str]) -> list[str]:
    """Arguments after the script / module of a `python ...` command."""
    target = python_target(argv)
    assert target is not None, argv
    return target[2]


def powershell_to_bash(text: str) -> tuple[dict[str, str], list[str]]:
    """`$env:NAME = "v"; .\\craft_experiments\\...\\run_tableN_*.ps1 args` -> (env, bash argv of the .sh twin)."""
    env: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";") if p.strip()]
    for part in parts[:-1]:
        m = re.match(r'^\$env:([A-Z_][A-Z0-9_]*)\s*=\s*"([^"]*)"$', part)
        if not m:
            raise ValueError(f"only `$env:NAME = \"value\";` may precede a driver call in PowerShell, got {part!r}")
        env[m.group(1)] = m.group(2)
    # PowerShell paths use backslashes, which POSIX shlex would eat: read them as slashes.
    tokens = shlex.split(parts[-1].replace("\\", "/"), posix=True) if parts else []
    if not tokens:
        raise ValueError("empty PowerShell command")
    script = tokens[0].removeprefix("./")
    if not DRIVER_SCRIPT_RE.match(script) or not script.endswith(".ps1"):
        raise ValueError(f"PowerShell blocks may only call the driver wrappers (.ps1), got {tokens[0]!r}")
    if not (REPO / script).is_file():
        raise ValueError(f"{script} does not exist")
    return env, ["bash", script.removesuffix(".ps1") + ".sh", *tokens[1:]]
