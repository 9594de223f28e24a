"""The plan a `--dry_run True` prints (finetune.py, run_libero_eval.py): ordered sections of (name, value) rows,
plus the key numbers as a dict for scripts and tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Plan:
    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    numbers: dict[str, int | float | str | None] = field(default_factory=dict)
    what: str = "trained"  # "nothing was <what>"

    def add(self, section: str, rows: list[tuple[str, object]]) -> None:
        self.sections.append((section, [(k, str(v)) for k, v in rows]))

    def lines(self) -> list[str]:
        out = [f"dry run: everything below was checked; nothing was {self.what}"]
        for section, rows in self.sections:
            out.append(f"[{section}]")
            width = max((len(k) for k, _ in rows), default=0)
            out += [f"  {k:<{width}}  {v}" for k, v in rows]
        return out
