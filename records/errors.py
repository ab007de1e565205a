"""Errors for bad user input: collected, one line each, exit code 2, nothing written."""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_STAGE_FAILED = 1


class InputError(Exception):
    """Bad input the user can fix: a path, a field, a value, a shape.

    Holds every problem found (torchtune-style: report all at once, not the first one only). The CLI
    prints each on its own line and exits with code 2 without a traceback.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects problems while validating, then raises them together.

    >>> p = Problems()
    >>> p.add("data/x.jsonl", "line 3: `text` is empty")
    >>> p.raise_if_any()
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def extend(self, other: Problems | InputError) -> None:
        self.items.extend(other.items if isinstance(other, Problems) else other.problems)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InputError(self.items)


class StageFailure(Exception):
    """A stage could not finish for a reason outside the input (the engine died, memory ran out, after
    the bounded retries). The message is one line that classifies the failure; what was already written
    stays on disk and the same command resumes from it."""
