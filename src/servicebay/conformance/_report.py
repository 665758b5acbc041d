"""What a conformance run found: one result per check, and the table `bay broker check` prints.

Each check has a stable id (``version.missing``, ``plan[sync].bind.idempotent``), says what it
asserts, and names the spec section that demands it. A failed MUST is a ``fail`` and makes the
run fail; a missed SHOULD/RECOMMENDED is a ``warn``; a check that could not run (the catalog
does not offer the feature, or an earlier step failed) is a ``skip`` with the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text


class Outcome(enum.StrEnum):
    """The verdict of one check."""

    PASS = "pass"  # noqa: S105 -- a verdict, not a password
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


# The first check of a run: when it fails the run stops, since every later check would fail
# for that one reason (the broker answering 401 to the credentials given).
CREDENTIALS_CHECK = "auth.accepted"

_STYLE = {
    Outcome.PASS: "green",
    Outcome.FAIL: "bold red",
    Outcome.WARN: "yellow",
    Outcome.SKIP: "dim",
}


@dataclass(frozen=True)
class CheckResult:
    """One check: its id, what it asserts, the spec section, the verdict and why."""

    check: str
    title: str
    section: str
    outcome: Outcome
    detail: str = ""


@dataclass
class Recorder:
    """Collects results in the order the checks ran."""

    prefix: str = ""
    results: list[CheckResult] = field(default_factory=list)

    def check(
        self, check: str, title: str, section: str, ok: bool, detail: str = "", *, must: bool = True
    ) -> bool:
        """Record a verdict; ``must=False`` turns a failure into a warning. Returns ``ok``."""
        outcome = Outcome.PASS if ok else (Outcome.FAIL if must else Outcome.WARN)
        self.results.append(CheckResult(self.prefix + check, title, section, outcome, detail))
        return ok

    def skip(self, check: str, title: str, section: str, reason: str) -> None:
        """Record a check that could not run, and why."""
        self.results.append(CheckResult(self.prefix + check, title, section, Outcome.SKIP, reason))


@dataclass
class Report:
    """The outcome of a whole run against one broker."""

    url: str
    results: list[CheckResult] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        """How many checks ended with ``outcome``."""
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed (MUST rules the broker broke)."""
        return [r for r in self.results if r.outcome is Outcome.FAIL]

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failed

    @property
    def credentials_refused(self) -> bool:
        """True when the broker refused the run's credentials, so nothing else was checked."""
        return any(r.check == CREDENTIALS_CHECK and r.outcome is Outcome.FAIL for r in self.results)

    def get(self, check: str) -> CheckResult:
        """The result of the check with id ``check`` (KeyError if it did not run)."""
        for result in self.results:
            if result.check == check:
                return result
        raise KeyError(check)

    def summary(self) -> str:
        """One line: how many passed, failed, warned and were skipped."""
        return (
            f"{self.count(Outcome.PASS)} passed, {self.count(Outcome.FAIL)} failed, "
            f"{self.count(Outcome.WARN)} warnings, {self.count(Outcome.SKIP)} skipped"
        )

    def render(self, console: Console) -> None:
        """Print the table of checks and the summary line."""
        table = Table(title=Text(f"OSB v2.17 conformance: {self.url}"), show_lines=False)
        table.add_column("result", no_wrap=True)
        table.add_column("check", overflow="fold")
        table.add_column("asserts")
        table.add_column("spec section")
        table.add_column("detail", overflow="fold")
        for r in self.results:
            # Text, not str: ids like plan[sandbox/sync] and JSON in details are not markup.
            table.add_row(
                Text(r.outcome.value, style=_STYLE[r.outcome]),
                Text(r.check),
                Text(r.title),
                Text(r.section),
                Text(r.detail),
            )
        console.print(table)
        style = "bold green" if self.ok else "bold red"
        console.print(Text(self.summary(), style=style))
