"""Hostile-input fuzzing: every campaign of ``tests/fuzz`` runs in its own
subprocess, so that an abort, a segfault or a hang fails one test with the
case that caused it instead of killing the test run.

The contract the campaigns check is in ``tests/fuzz/contract.py``. Each run
draws a fresh seed (under ``CI=true``, one derived from the commit, so that a
submission's CI replays its author's run), printed in the failure message;
to reproduce, set it:

    UNET_RT_FUZZ_SEED=1234 UNET_RT_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py -k corrupt

``UNET_RT_FUZZ_EXAMPLES`` sets the examples of every campaign (the defaults
keep the whole file to about three minutes on two cores);
``UNET_RT_FUZZ_TIME_SCALE`` stretches the per-call time limits on slow
machines, ``UNET_RT_FUZZ_MEMORY_GIB`` sets the workers' address-space cap,
and ``UNET_RT_FUZZ_SKIP`` (``fnmatch`` patterns, one per line) leaves out
the cases of a known problem so that a run can find the others.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Examples per campaign by default: about five thousand calls, 900
#: damaged, lying or misbehaving models and 60 command-line runs in all, in
#: about three minutes on two cores (``probing`` is kept tiny: a failed probe
#: takes seconds).
DEFAULT_EXAMPLES: Dict[str, int] = {
    "arrays": 1000,
    "numerics": 800,
    "outputs": 800,
    "arguments": 800,
    "planning": 800,
    "corrupt": 300,
    "metadata": 300,
    "networks": 300,
    "probing": 3,
    "paths": 1,
    "cli": 60,
    "export": 12,
}
#: Worst-case seconds per example, for the subprocess timeout (a hung call
#: ends its worker after at most 30 s: the timeout only catches the rest).
SECONDS_PER_EXAMPLE: Dict[str, float] = {"probing": 40.0, "corrupt": 1.0, "metadata": 1.0, "networks": 1.0,
                                          "cli": 3.0, "export": 30.0}
#: Exit status of a worker whose watchdog caught a hung call (tests/fuzz/recorder.py).
HANG_EXIT = 124
#: Exit statuses that mean the process died: abort (134), segfault (139), Rust's panic=abort (101).
CRASH_EXITS = (101, 134, 139)


@dataclass(frozen=True)
class Run:
    """One worker run: how it was started and how it ended."""

    campaign: str
    seed: int
    examples: int
    command: List[str]
    returncode: Optional[int]
    stdout: str
    stderr: str
    log: Path
    timed_out: bool = False


def _env_int(name: str) -> Optional[int]:
    """The integer in environment variable ``name``, or ``None``."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def _seed() -> int:
    """``UNET_RT_FUZZ_SEED``; else, under CI (``CI=true``), a seed drawn
    from the commit, so that a submission's CI run replays exactly the
    cases its author ran and each new commit still explores new ones;
    else a fresh random seed."""
    chosen = _env_int("UNET_RT_FUZZ_SEED")
    if chosen is not None:
        return chosen
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        commit = _head_commit()
        if commit:
            return int(commit[:8], 16) % 2**31
    return random.SystemRandom().randrange(2**31)


def _head_commit() -> Optional[str]:
    """The checkout's commit, or ``None`` outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) >= 8 else None


def _examples(campaign: str) -> int:
    """``UNET_RT_FUZZ_EXAMPLES``, else the campaign's default."""
    chosen = _env_int("UNET_RT_FUZZ_EXAMPLES")
    return chosen if chosen is not None else DEFAULT_EXAMPLES[campaign]


def _time_scale() -> float:
    """``UNET_RT_FUZZ_TIME_SCALE`` (default 1)."""
    return float(os.environ.get("UNET_RT_FUZZ_TIME_SCALE", "") or 1.0)


def _timeout(campaign: str, examples: int) -> float:
    """The subprocess's wall-clock limit."""
    per_example = SECONDS_PER_EXAMPLE.get(campaign, 0.5)
    return (120 + examples * per_example) * _time_scale()


def _run_worker(campaign: str, tmp_path: Path) -> Run:
    """Runs one campaign in a subprocess."""
    seed, examples = _seed(), _examples(campaign)
    log = tmp_path / f"{campaign}.log"
    command = [sys.executable, "-m", "tests.fuzz.worker", campaign, "--seed", str(seed), "--examples", str(examples),
               "--log", str(log), "--time-scale", str(_time_scale())]
    memory = os.environ.get("UNET_RT_FUZZ_MEMORY_GIB", "").strip()
    if memory:
        command += ["--memory-gib", memory]
    for pattern in filter(None, os.environ.get("UNET_RT_FUZZ_SKIP", "").splitlines()):
        command += ["--skip", pattern]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, errors="backslashreplace",
                              timeout=_timeout(campaign, examples))
    except subprocess.TimeoutExpired as exc:
        return Run(campaign, seed, examples, command, None, _text(exc.stdout), _text(exc.stderr), log, timed_out=True)
    return Run(campaign, seed, examples, command, proc.returncode, proc.stdout, proc.stderr, log)


def _text(output: object) -> str:
    """A subprocess's captured output as text."""
    if isinstance(output, bytes):
        return output.decode("utf-8", "backslashreplace")
    return output if isinstance(output, str) else ""


def _last_case(log: Path) -> str:
    """The last case the worker logged (the one running when it died)."""
    if not log.exists():
        return "<no case logged>"
    cases = [line for line in log.read_text("utf-8", "backslashreplace").splitlines() if line[:1].isdigit()]
    return cases[-1] if cases else "<no case logged>"


def _violations(stdout: str) -> List[str]:
    """The violations the worker printed as they happened (one per kind)."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("VIOLATION "):
            v = json.loads(line[len("VIOLATION "):])
            found.append(f"- {v['problem']}" + (f": {v['exception']}: {v['message']}" if v["exception"] else "")
                         + f"\n    case {v['number']}: {v['case']}")
    return found


def _summary(stdout: str) -> str:
    """The worker's final report (without the VIOLATION lines)."""
    return "\n".join(line for line in stdout.splitlines() if not line.startswith(("VIOLATION ", "NOTE ")))


def _stderr_tail(stderr: str, lines: int = 25) -> str:
    """What stderr says about a crash: from the first fatal error or panic
    (the faulthandler dump starts with the crashing thread's innermost
    frames), else its end; without hypothesis' draws and progress bars."""
    kept = [line for line in stderr.splitlines() if not line.startswith(("Draw ", "unet_rt:"))]
    for i, line in enumerate(kept):
        if "Fatal Python error" in line or "panicked at" in line or "terminate called" in line:
            return "\n".join(kept[i:i + lines])
    return "\n".join(kept[-lines:])


def _reproduce(run: Run) -> str:
    """The seed, example count and commands that rerun ``run``."""
    return (f"seed {run.seed}, {run.examples} examples; reproduce with UNET_RT_FUZZ_SEED={run.seed} "
            f"UNET_RT_FUZZ_EXAMPLES={run.examples} pytest tests/test_fuzz.py -k {run.campaign}\n"
            f"(worker: {' '.join(run.command[1:])})")


def verdict(run: Run) -> Optional[str]:
    """``None`` when the campaign met the contract, else the failure report."""
    head = f"fuzz campaign {run.campaign!r}: "
    found = "\n".join(_violations(run.stdout))
    earlier = f"\nviolations found before that:\n{found}" if found else ""
    if run.timed_out:
        return (f"{head}TIMED OUT; the call running: {_last_case(run.log)}{earlier}\n{_reproduce(run)}")
    code = run.returncode
    if code == 0:
        return None
    if code == HANG_EXIT:
        return f"{head}HUNG: {_summary(run.stdout).strip()}{earlier}\n{_reproduce(run)}"
    if code == 1 and re.search(rf"^{re.escape(run.campaign)}: \d+ cases", run.stdout, re.MULTILINE):
        return f"{head}contract violations:\n{_summary(run.stdout)}\n{_reproduce(run)}"
    what = "CRASHED" if code is not None and (code < 0 or code in CRASH_EXITS) else "worker failed"
    return (f"{head}{what} with exit status {code} in case: {_last_case(run.log)}{earlier}\n"
            f"stderr:\n{_stderr_tail(run.stderr)}\n{_reproduce(run)}")


@pytest.mark.parametrize("campaign", list(DEFAULT_EXAMPLES))
def test_campaign_meets_the_contract(campaign: str, tmp_path: Path) -> None:
    """Every call of the campaign returns a right result or raises a
    ``TypeError``/``UnetRtError``: no crash, hang, wrong exception or silent
    wrong result."""
    run = _run_worker(campaign, tmp_path)
    report = verdict(run)
    if report:
        pytest.fail(report, pytrace=False)


def test_a_crash_is_reported_with_its_case(tmp_path: Path) -> None:
    """The harness itself: a worker that dies names the case it was running."""
    log = tmp_path / "x.log"
    log.write_text("1\tfirst()\n\t-> returned None (0.000 s)\n2\tsecond(segfaults)\n")
    run = Run("x", 7, 2, [sys.executable, "-m", "tests.fuzz.worker", "x"], -11, "", "Fatal Python error", log)
    report = verdict(run) or ""
    assert "CRASHED" in report and "2\tsecond(segfaults)" in report and "UNET_RT_FUZZ_SEED=7" in report
    hung = Run("x", 7, 2, [sys.executable], HANG_EXIT, "HANG: case 2 ran for more than 30 s: second()\n", "", log)
    assert "HUNG" in (verdict(hung) or "")
    assert verdict(Run("x", 7, 2, [sys.executable], 0, "x: 2 cases, 0 violations", "", log)) is None
