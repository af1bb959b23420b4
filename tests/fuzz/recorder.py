"""Running one case: log it (flushed) before the call, time the call under a
watchdog, classify the outcome, and keep the violations.

The log holds one line per case, ``<number>\\t<case>``, written before the
call, and one ``\\t-> <outcome>`` line after it: after a crash the last
case line names the case that was running. A call
that exceeds its hard limit makes the watchdog write ``HANG`` to the log and
to stdout and end the process with :data:`HANG_EXIT`.

Violations are printed as they occur, one ``VIOLATION {json}`` line per new
kind (so that a later crash does not lose them), and summarised at the end;
``InternalError``s, which the contract allows but which are bugs by their
own account, are printed the same way as ``NOTE`` lines.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from .contract import Expect, check_result, classify_exception, is_internal_error, is_nonfinite_error

__all__ = ["HANG_EXIT", "Violation", "Recorder", "dedup_key"]

#: Exit status of a worker whose call hung.
HANG_EXIT = 124
#: The hard limit of a call is this many times its soft limit (at least MIN_HARD_S).
HARD_FACTOR = 3.0
MIN_HARD_S = 20.0
#: Longest case description kept in logs and reports.
MAX_CASE = 600


@dataclass
class Violation:
    """One call whose outcome broke the contract."""

    campaign: str
    number: int
    case: str
    problem: str
    exception: str = ""
    message: str = ""
    seconds: float = 0.0

    def key(self) -> str:
        """What identical violations share (see :func:`dedup_key`)."""
        return dedup_key(self.problem, self.exception, self.message)

    def to_json(self) -> str:
        """The violation as one line of JSON."""
        return json.dumps(self.__dict__, default=str)


def dedup_key(problem: str, exception: str, message: str) -> str:
    """A key shared by violations that differ only in numbers and quoted values.

    >>> dedup_key("slow", "", "") == dedup_key("slow", "", "")
    True
    >>> dedup_key("p", "E", "tile 45 is bad") == dedup_key("p", "E", "tile 77 is bad")
    True
    >>> dedup_key("p", "E", "cannot allocate 8.00 TiB") == dedup_key("p", "E", "cannot allocate 1.6 PiB")
    True
    >>> dedup_key("p", "E", "expected str, not int") == dedup_key("p", "E", "expected str, not float")
    True
    """
    def normal(text: str) -> str:
        """``text`` with numbers and quoted values blanked, cut to 120 characters."""
        text = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", text)
        text = re.sub(r"\b(not|got) [\w<>.]+", r"\1 T", text)  # "expected an int, not float" is one kind
        text = re.sub(r"0x[0-9a-fA-F]+|[-+]?\d+(\.\d+)?(e[-+]?\d+)?( ?[KMGTPE]i?B)?", "N", text)
        return text[:120]

    return "|".join((normal(problem), exception, normal(message.splitlines()[0] if message else "")))


def _short(text: str, limit: int = MAX_CASE) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = text.replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _outcome(result: Any, error: Optional[BaseException]) -> str:
    """One line saying how a call ended, for the log."""
    if error is not None:
        return f"raised {type(error).__name__}: {_short(str(error), 200)}"
    shape = getattr(result, "shape", None)
    if shape is not None:
        return f"returned {type(result).__name__} {tuple(shape)} {getattr(result, 'dtype', '')}"
    return f"returned {_short(repr(result), 200)}"


class Recorder:
    """Runs and classifies the cases of one campaign."""

    def __init__(self, campaign: str, log: TextIO, stdout: TextIO = sys.stdout, skip: Sequence[str] = ()) -> None:
        """Cases go to ``log``, violations to ``stdout``; ``skip`` holds fnmatch patterns of cases not to run."""
        self.campaign = campaign
        self.skip = tuple(skip)
        self.skipped = 0
        self.cases = 0
        self.internal_errors = 0
        self.nonfinite_errors = 0
        self.violations: List[Violation] = []
        self.notes: List[Violation] = []
        self._seen: Dict[str, int] = {}
        self._log = log
        self._stdout = stdout

    # --- running -------------------------------------------------------------

    def run(
        self,
        case: str,
        call: Callable[[], Any],
        expect: Optional[Expect] = None,
        arguments: Sequence[str] = (),
        limit_s: float = 10.0,
    ) -> Any:
        """Logs ``case``, runs ``call()`` and checks the outcome; returns the
        result, or ``None`` when the call raised (or matched a ``skip``
        pattern: a known problem that would hide the others)."""
        if any(fnmatch.fnmatchcase(case, pattern) for pattern in self.skip):
            self.skipped += 1
            return None
        self.cases += 1
        number = self.cases
        case = _short(case)
        self._write_log(f"{number}\t{case}\n")
        hard = max(MIN_HARD_S, HARD_FACTOR * limit_s)
        watchdog = threading.Timer(hard, self._hang, args=(number, case, hard))
        watchdog.daemon = True
        start = time.perf_counter()
        watchdog.start()
        try:
            result, error = call(), None
        except BaseException as exc:  # noqa: BLE001 (PanicException is a BaseException)
            result, error = None, exc
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - start
        self._write_log(f"\t-> {_outcome(result, error)} ({seconds:.3f} s)\n")
        self._classify(number, case, result, error, expect or Expect(), arguments)
        if seconds > limit_s:
            self.report(Violation(self.campaign, number, case, f"slow: took {seconds:.1f} s (limit {limit_s:g} s)",
                                  seconds=seconds))
        return result

    def _classify(self, number: int, case: str, result: Any, error: Optional[BaseException], expect: Expect,
                  arguments: Sequence[str]) -> None:
        """Records what is wrong with the outcome of one call, if anything."""
        if error is None:
            problem = check_result(result, expect)
            if problem:
                self.report(Violation(self.campaign, number, case, f"silent: {problem}"))
            return
        self.nonfinite_errors += is_nonfinite_error(error)
        if is_internal_error(error):
            self.internal_errors += 1
            self._note(Violation(self.campaign, number, case, "InternalError (allowed, but a bug by its own words)",
                                 f"{type(error).__module__}.{type(error).__qualname__}", _short(str(error), 400)))
        problem = classify_exception(error, arguments)
        if problem:
            cls = type(error)
            self.report(Violation(self.campaign, number, case, problem, f"{cls.__module__}.{cls.__qualname__}",
                                  _short(str(error), 400)))

    def check(self, case: str, problem: Optional[str]) -> None:
        """Records a violation found outside :meth:`run` (e.g. by comparing
        two results), attributed to ``case``."""
        if problem:
            self.report(Violation(self.campaign, self.cases, _short(case), problem))

    def _hang(self, number: int, case: str, hard: float) -> None:
        """The watchdog: reports the hung case and ends the process."""
        line = f"HANG: case {number} ran for more than {hard:g} s: {case}"
        self._write_log(line + "\n")
        self._stdout.write(line + "\n")
        self._stdout.flush()
        os._exit(HANG_EXIT)

    def _write_log(self, text: str) -> None:
        """Writes to the log and flushes (a crash must not lose the line)."""
        self._log.write(text)
        self._log.flush()

    # --- reporting -----------------------------------------------------------

    def report(self, violation: Violation) -> None:
        """Keeps ``violation``; prints the first of each kind at once."""
        self.violations.append(violation)
        key = violation.key()
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._seen[key] == 1:
            self._stdout.write(f"VIOLATION {violation.to_json()}\n")
            self._stdout.flush()

    def note(self, case: str, problem: str) -> None:
        """Records a finding the contract allows but a user would want to
        know about, attributed to ``case``."""
        self._note(Violation(self.campaign, self.cases, _short(case), problem))

    def _note(self, note: Violation) -> None:
        """Keeps a finding the contract allows (an ``InternalError``...);
        prints the first of each kind as a ``NOTE`` line."""
        key = "note|" + note.key()
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._seen[key] == 1:
            self.notes.append(note)
            self._stdout.write(f"NOTE {note.to_json()}\n")
            self._stdout.flush()

    def summary(self) -> str:
        """The final report: one block per kind of violation, then the
        ``CAMPAIGN: n cases, m violations`` line."""
        lines: List[str] = []
        first: Dict[str, Violation] = {}
        for v in self.violations:
            first.setdefault(v.key(), v)
        for key, v in first.items():
            lines.append(f"[{self._seen[key]}x] {v.problem}" + (f": {v.exception}: {v.message}" if v.exception else ""))
            lines.append(f"    case {v.number}: {v.case}")
        for note in self.notes:
            detail = f": {note.message}" if note.message else ""
            lines.append(f"[{self._seen['note|' + note.key()]}x] note: {note.problem}{detail}")
            lines.append(f"    case {note.number}: {note.case}")
        extra = []
        if self.internal_errors:
            extra.append(f"{self.internal_errors} InternalError")
        if self.nonfinite_errors:
            extra.append(f"{self.nonfinite_errors} NonFiniteError")
        tail = f" ({', '.join(extra)} raised)" if extra else ""
        if self.skipped:
            tail += f" ({self.skipped} skipped)"
        lines.append(f"{self.campaign}: {self.cases} cases, {len(self.violations)} violations "
                     f"({len(first)} kinds){tail}")
        return "\n".join(lines)
