"""The structured content of the docs matches the code: flag tables, metric names, resume rules, error
messages, the results-table format, links, Python snippets and citations."""

from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from tests.docs.doc_commands import DOC_FILES, REPO, subprocess_env
from tests.docs.doc_tables import (
    code,
    dataclass_defaults,
    error_excerpts,
    fenced_blocks,
    headings,
    links,
    message_pattern,
    normalised_source,
    parse_default,
    region,
    strip_code_blocks,
    table_rows,
)

README = REPO / "README.md"
EXPERIMENTS = REPO / "docs" / "EXPERIMENTS_AND_TRAINING.md"


def _text(path):
    return path.read_text(encoding="utf-8")


def _flag_table(doc, name: str) -> list[tuple[str, object, list[str]]]:
    """(flag without dashes, parsed default, all cells) of the flag table marked `flags:<name>`."""
    rows = table_rows(region(_text(doc), f"flags:{name}", "/flags"))
    out = []
    for row in rows:
        flag = code(row[0])
        assert flag.startswith("--"), row
        out.append((flag[2:], row[1], row))
    return out


@pytest.mark.parametrize("config", ["FinetuneConfig", "EvalConfig"])
def test_flag_table_lists_every_field_with_its_default(config):
    """Adding, renaming, removing or re-defaulting a flag without updating the doc fails here."""
    if config == "FinetuneConfig":
        from prismatic.training.config import FinetuneConfig as cls
    else:
        from prismatic.eval.config import EvalConfig as cls
    documented = _flag_table(EXPERIMENTS, config)
    defaults = dataclass_defaults(cls)
    assert [name for name, _, _ in documented] == list(defaults), (
        f"the {config} table in docs/EXPERIMENTS_AND_TRAINING.md must list exactly the config's fields, in "
        f"declaration order.\nmissing: {sorted(set(defaults) - {n for n, _, _ in documented})}\n"
        f"extra: {sorted({n for n, _, _ in documented} - set(defaults))}"
    )
    for name, cell, row in documented:
        value = parse_default(code(cell))
        expected = defaults[name]
        assert value == expected and type(value) is type(expected) or (
            isinstance(expected, float) and isinstance(value, (int, float)) and float(value) == expected
        ), f"--{name}: the doc says default {cell}, the code has {expected!r}"
        assert all(c.strip() for c in row[2:4]), f"--{name}: both the Chinese and the English description are needed"


def test_flag_table_rejects_a_stale_default():
    """The default comparison is strict enough to catch a changed value."""
    assert parse_default("5e-4") == 5e-4 and parse_default("100000") == 100_000
    assert parse_default("None") is None and parse_default('""') == "" and parse_default("True") is True
    assert parse_default("vla-adapter-pro") == "vla-adapter-pro"
    assert parse_default("0.01") != 0.001


def test_driver_flag_table_matches_the_driver_cli():
    """Every driver setting is documented with its environment variable, default and --smoke value."""
    from craft_experiments.common_utils.experiments import build_parser

    parser = build_parser()
    control = {"-h", "--dry-run", "--smoke", "--stage", "--quiet", "--wait", "--collect_only"}
    settings = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings
                and a.option_strings[0] not in control}
    documented = {f"--{name}": row for name, _, row in _flag_table(EXPERIMENTS, "drivers")}
    assert sorted(documented) == sorted(settings), (sorted(set(settings) - set(documented)),
                                                    sorted(set(documented) - set(settings)))
    path_defaults = {"--python", "--finetune_script", "--eval_script"}  # machine-specific absolute paths
    for flag, help_text in settings.items():
        row = documented[flag]
        env = re.search(r"\[env (\w+);", help_text).group(1)
        assert code(row[1]) == env, f"{flag}: doc env var {row[1]}, driver {env}"
        default = re.search(r"default '([^']*)'", help_text).group(1)
        if flag not in path_defaults:
            assert parse_default(code(row[2])) == parse_default(default) or (default == "" and code(row[2]) == '""'), (
                f"{flag}: doc default {row[2]}, driver {default!r}")
        smoke = re.search(r"--smoke: '?([^'\]]*)'?\]", help_text)
        assert (code(row[3]) if row[3] else None) == (smoke.group(1) if smoke else None), (
            f"{flag}: doc --smoke value {row[3]!r}, driver {smoke.group(1) if smoke else None!r}")
    for flag in control - {"-h"}:
        assert f"`{flag}" in _text(EXPERIMENTS), f"control flag {flag} is not documented"


def test_driver_table_rows_are_documented():
    from craft_experiments.common_utils.driver_settings import resolve_settings  # noqa: F401  (import check)
    from craft_experiments.common_utils.experiment_plan import TABLES

    text = _text(EXPERIMENTS) + _text(README)
    for table in TABLES.values():
        for row in table.rows(_default_settings()):
            name = re.sub(r"^(baseline|craft)-\d+shot$", r"\1-<N>shot", row.name)
            assert f"`{name}`" in text, f"row {row.name} of {table.name} is not documented"


def _default_settings():
    from craft_experiments.common_utils.driver_settings import resolve_settings
    from craft_experiments.common_utils.experiments import build_parser

    return resolve_settings(build_parser().parse_args(["table2"]), environ={})


def test_metric_table_matches_the_logged_keys():
    from prismatic.training.metrics import WANDB_KEYS

    rows = table_rows(region(_text(README), "metrics-table", "/metrics-table"))
    documented = {code(row[1]): code(row[0]) for row in rows}
    assert documented == WANDB_KEYS


def test_progress_bar_example_is_the_real_format():
    from prismatic.training.metrics import progress_line

    line = progress_line({"loss": 0.1234, "lambda": 0.05, "conflict_ratio": 0.2345, "grad_norm": 1.23, "lr": 5e-4})
    assert f"`{line}`" in _text(README)


def test_resume_must_match_list_is_the_trainer_s():
    from prismatic.training.train import RESUME_MUST_MATCH

    listed = re.findall(r"`(\w+)`", region(_text(EXPERIMENTS), "resume-must-match", "/resume-must-match"))
    assert listed == list(RESUME_MUST_MATCH)


def test_quoted_error_messages_exist_in_the_code():
    """Every message in the docs' error tables is (a literal excerpt of) a message the code raises or logs."""
    source = normalised_source()
    excerpts = error_excerpts()
    assert len(excerpts) >= 20
    missing = [f"{doc.relative_to(REPO)}: {text}" for doc, text in excerpts if not message_pattern(text).search(source)]
    assert not missing, "error messages quoted in the docs that the code no longer produces:\n" + "\n".join(missing)


def test_error_matching_is_not_vacuous():
    source = normalised_source()
    assert message_pattern("--resume True but no checkpoint of run '…' in …").search(source)
    assert message_pattern("--craft_lambda_max (…) must be >= --craft_retention_weight (…)").search(source)
    assert not message_pattern("--resume True but no checkpoints at all in …").search(source)
    assert not message_pattern("data_root_dir is missing: …").search(source)


def test_results_table_layout_matches_the_renderer():
    from craft_experiments.common_utils.tables import ResultRecord, build_table, render_csv, render_markdown

    records = [ResultRecord(m, s, seed, 0.5) for m in ("a", "b") for s in ("libero_spatial", "libero_object")
               for seed in (7, 8, 9)]
    table = build_table(records)
    md = render_markdown(table, "T").splitlines()
    text = _text(README)
    assert md[-1] in text, f"the Markdown footer in the README differs from the renderer's: {md[-1]!r}"
    assert render_csv(table).splitlines()[0] in text
    assert "| Method | Spatial | Object | Goal | Long | Avg. |" in text
    from craft_experiments.common_utils.experiment_plan import TABLES

    table1 = TABLES["table1"]
    assert f"**{table1.title}**" in text
    for row in table1.rows(_default_settings()):
        assert f"| {row.label} |" in text, f"README's table layout lacks the row label {row.label!r}"


def test_demo_description_matches_its_config():
    """README's description of `make demo` (300 steps, tiny, CRaFT, .cache/data, runs/demo) is the config's."""
    import yaml

    config = yaml.safe_load((REPO / "vla-scripts" / "configs" / "demo.yaml").read_text())
    text = _text(README)
    assert config["model_preset"] == "tiny" and config["use_craft"] is True and config["device"] == "cpu"
    assert f"{config['max_steps']} 步" in text and f"{config['max_steps']}-step" in text
    assert f"`{config['data_root_dir']}/`" in text and f"`{config['run_root_dir']}/`" in text
    assert "--config_path vla-scripts/configs/demo.yaml" in (REPO / "Makefile").read_text()


def test_internal_links_resolve():
    problems = []
    for doc in DOC_FILES:
        for label, target in links(doc):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                problems.append(f"{doc.relative_to(REPO)}: [{label}]({target}): no such file")
            elif anchor and anchor not in headings(file):
                problems.append(f"{doc.relative_to(REPO)}: [{label}]({target}): no heading with that anchor")
    assert not problems, "\n".join(problems)


def test_python_snippets_run(tmp_path):
    """```python blocks are self-contained and run (each in a fresh interpreter)."""
    blocks = [(doc, line, body) for doc in DOC_FILES for line, body in fenced_blocks(doc, "python")]
    assert blocks
    for doc, line, body in blocks:
        proc = subprocess.run(["python", "-c", "import prismatic\n" + body], cwd=tmp_path, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{doc.relative_to(REPO)}:{line}:\n{proc.stderr[-3000:]}"


def test_bibtex_entries_are_well_formed():
    (_, bib), = fenced_blocks(README, "bibtex")
    entries = re.findall(r"@(\w+)\{([\w-]+),(.*?)\n\}", bib, re.S)
    assert [key for _, key, _ in entries] == ["craft_vla", "wang2025vlaadapter", "chaudhry2019agem"]
    for _kind, key, body in entries:
        assert body.count("{") == body.count("}"), key
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(.+?),?$", body, re.M))
        assert "title" in fields, key
    assert "2509.09372" in bib and "Efficient Lifelong Learning with {A-GEM}" in bib


def test_every_doc_is_bilingual():
    """Chinese first, then English: every section heading carries both, Chinese first."""
    for doc in DOC_FILES:
        text = strip_code_blocks(_text(doc))
        for m in re.finditer(r"^(#{1,3})\s+(.*)$", text, re.M):
            title = m.group(2)
            if title == "CRaFT-VLA":
                continue
            cjk = re.search(r"[\u4e00-\u9fff]", title)
            latin = re.search(r"[A-Za-z]{3,}", title)
            assert cjk and latin and cjk.start() < title.index(" / "), f"{doc.relative_to(REPO)}: heading {title!r}"


def test_dataclass_defaults_helper():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: list = dataclasses.field(default_factory=list)

    assert dataclass_defaults(C) == {"a": 1, "b": []}


def _preset_rows() -> dict[str, list[str]]:
    text = _text(EXPERIMENTS)
    block = text.split("## 模型预设 / Model presets", 1)[1].split("<!--", 1)[0]
    return {code(row[0]): row for row in table_rows(block)}


def test_preset_table_matches_the_presets():
    from prismatic.models.config import PRESETS, get_preset

    rows = _preset_rows()
    assert sorted(rows) == sorted(PRESETS)
    for name, row in rows.items():
        config = get_preset(name)
        assert row[2] == f"{config.vision.image_size} px", (name, row[2])
        assert int(row[3].split()[0]) == config.llm.num_hidden_layers, (name, row[3])
