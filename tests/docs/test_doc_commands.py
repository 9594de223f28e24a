"""Every command in the docs is executed by a scenario test or validated here, so the docs cannot rot.

See tests/docs/doc_commands.py for what "validated" means per kind of command. Scenario (executed) blocks
are run by tests/docs/test_doc_scenarios.py.
"""

from __future__ import annotations

import pytest

from tests.docs.doc_commands import (
    DOC_FILES,
    REPO,
    DocCommand,
    ShellCommand,
    all_commands,
    classify,
    extract_commands,
    make_sandbox,
    powershell_to_bash,
)
from tests.docs.doc_validation import validate_command

COMMANDS = all_commands()
VALIDATED = [c for c in COMMANDS if c.scenario is None]


def test_docs_exist_and_hold_commands():
    names = {p.relative_to(REPO).as_posix() for p in DOC_FILES}
    assert {"README.md", "docs/DATASETS.md", "docs/EXPERIMENTS_AND_TRAINING.md"} <= names
    for doc in DOC_FILES:
        assert extract_commands(doc), f"{doc} has no ```bash commands"


def test_every_command_is_executed_or_validated():
    """A command outside a doc-test scenario must be one a validator understands (else this fails)."""
    problems = []
    for command in VALIDATED:
        try:
            if command.language == "powershell":
                powershell_to_bash(command.text)
            else:
                classify(ShellCommand.parse(command.text).argv)
        except ValueError as e:
            problems.append(f"{command.where}: {e}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return make_sandbox(tmp_path_factory.mktemp("doc-validate"))


@pytest.mark.parametrize("command", VALIDATED, ids=lambda c: c.where)
def test_validate_doc_command(command: DocCommand, sandbox):
    validate_command(command, sandbox)


# ---- the validators themselves must reject broken commands (otherwise "validated" means nothing) ----

def _doc(text: str, language: str = "bash") -> DocCommand:
    return DocCommand(REPO / "README.md", 1, text, language, None)


REAL = ("--model_preset vla-adapter-pro --vlm_path pretrained_models/vlm --data_root_dir data/libero "
        "--dataset_name libero_spatial_no_noops")


@pytest.mark.parametrize("text", [
    f"python vla-scripts/finetune.py {REAL} --max_stepz 10",                       # unknown flag
    f"python vla-scripts/finetune.py {REAL} --max_steps ten",                      # bad type
    f"python vla-scripts/finetune.py {REAL} --craft_anchor_type both",             # __post_init__ validation
    "python vla-scripts/finetune.py --model_preset vla-adapter-pro",               # missing --vlm_path
    f"torchrun --standalone --nproc_per_node 4 vla-scripts/finetune.py {REAL} --use_kraft True",
    f"torchrun --nproc-per-nodes 4 vla-scripts/finetune.py {REAL}",                # bad launcher flag
    "python experiments/robot/libero/run_libero_eval.py --pretrained_checkpoint x --task_suite_name libero_100",
    "python experiments/robot/libero/run_libero_eval.py --pretrained_checkpoint x --num_env 4",
    "bash craft_experiments/01_main_results/run_table1_experiments.sh --suites spatial",
    "bash craft_experiments/01_main_results/run_table1_experiments.sh --seedz 7",
    "CRAFT_SEEDZ=7 bash craft_experiments/01_main_results/run_table1_experiments.sh",
    "make no-such-target",
    "hf download openvla/modified_libero_rlds --repo-kind dataset",
    "python -m craft_experiments.common_utils.log_parser --logs x --format docx",
    "python vla-scripts/make_synthetic_libero_rlds.py --out data --tasks 2",
    "python vla-scripts/finetune.py --model_preset tiny --device cpu",             # tiny: must be executed
    "python vla-scripts/pretrain_tiny_vlm.py --max_steps 0",                       # PretrainConfig validation
    "python vla-scripts/pretrain_tiny_vlm.py --max_stepz 10",                      # unknown flag
    "python vla-scripts/generate_libero_demos.py --task_suite_name libero_goal --demos_per_task 1 --out data",
    "python vla-scripts/generate_libero_demos.py --task_suite_name libero_object --demos_per_task 1",
])
def test_validators_reject_broken_commands(text, sandbox):
    from draccus.utils import DraccusException

    # AssertionError: our checks; SystemExit: argparse; DraccusException: draccus (wraps __post_init__ errors).
    with pytest.raises((AssertionError, SystemExit, DraccusException)):
        validate_command(_doc(text), sandbox)


def test_validators_reject_broken_powershell(sandbox):
    with pytest.raises(ValueError):
        validate_command(_doc(r".\vla-scripts\finetune.ps1 --dry-run", "powershell"), sandbox)
    with pytest.raises(AssertionError):
        validate_command(_doc(r".\craft_experiments\01_main_results\run_table1_experiments.ps1 --seedz 7",
                              "powershell"), sandbox)


def test_unknown_command_kinds_are_refused():
    for text in ("pip install foo", "python train.py", "curl https://example.org", "cd /tmp"):
        with pytest.raises(ValueError, match="no doc-test validator"):
            classify(ShellCommand.parse(text).argv)


def test_block_extraction(tmp_path, monkeypatch):
    """Continuations are joined, comments dropped, tags attach to the next fence only."""
    import tests.docs.doc_commands as dc

    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n\n<!-- doc-test: demo -->\n```bash\n# a comment\npython a.py \\\n    --x 1  # trailing\n\nls\n```\n\n"
        "```bash\nmake demo\n```\n```text\nnot a command\n```\n"
    )
    monkeypatch.setattr(dc, "REPO", tmp_path)
    commands = dc.extract_commands(doc)
    assert [(c.line, c.text, c.scenario) for c in commands] == [
        (6, "python a.py --x 1  # trailing", "demo"), (9, "ls", "demo"), (13, "make demo", None)]
    assert ShellCommand.parse(commands[0].text).argv == ["python", "a.py", "--x", "1"]
    doc.write_text("```\nmake demo\n```\n")
    with pytest.raises(ValueError, match="without a language"):
        dc.extract_commands(doc)
    doc.write_text("```sh\nmake demo\n```\n")
    with pytest.raises(ValueError, match="```bash"):
        dc.extract_commands(doc)
