"""Runs one fuzz campaign and reports its violations.

``python -m tests.fuzz.worker CAMPAIGN --seed S --examples N --log FILE``
draws ``N`` hypothesis examples (seeded with ``S``), logs each call to
``FILE`` before making it, prints a ``VIOLATION {json}`` line for the first
violation of each kind as it happens, then a summary ending in
``CAMPAIGN: n cases, m violations``. ``--skip PATTERN`` leaves out the cases
that match a known problem. Exit status: 0 without violations, 1
with some, :data:`~tests.fuzz.recorder.HANG_EXIT` when a call hung; any
other status is a crash.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import shutil
import sys
import tempfile
import warnings
from typing import Callable, Dict, Optional, Sequence

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from .arguments import arguments, planning
from .cli import cli
from .common import Context, Limits
from .export import export
from .files import corrupt, metadata, networks, paths, probing
from .inputs import arrays, numerics, outputs
from .recorder import Recorder

__all__ = ["CAMPAIGNS", "run_campaign", "main"]

Campaign = Callable[[Context, st.DataObject], None]

#: Every campaign, by name.
CAMPAIGNS: Dict[str, Campaign] = {
    "arrays": arrays,
    "numerics": numerics,
    "outputs": outputs,
    "arguments": arguments,
    "planning": planning,
    "corrupt": corrupt,
    "metadata": metadata,
    "networks": networks,
    "probing": probing,
    "paths": paths,
    "cli": cli,
    "export": export,
}

#: Address space a worker may map (GiB): a runtime that tries to allocate a
#: result of terabytes fails inside the worker instead of swamping the machine.
DEFAULT_MEMORY_GIB = 16


def limit_memory(gib: float) -> None:
    """Caps the process's address space at ``gib`` GiB (0: no cap)."""
    if gib > 0:
        cap = int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def run_campaign(name: str, seed_value: int, examples: int, log_path: str, time_scale: float = 1.0,
                 skip: Sequence[str] = ()) -> Recorder:
    """Runs campaign ``name``; the recorder holds its cases and violations.
    Cases matching a ``skip`` pattern (``fnmatch``) are not run."""
    campaign = CAMPAIGNS[name]
    # Next to the log (a pytest tmp_path): a crashed or hung worker cannot clean up after itself.
    beside_log = os.path.dirname(os.path.abspath(log_path)) if log_path != os.devnull else None
    tmp = tempfile.mkdtemp(prefix=f"unet_rt_fuzz_{name}_", dir=beside_log)
    with open(log_path, "w", encoding="utf-8", errors="backslashreplace") as log:
        rec = Recorder(name, log, skip=skip)
        ctx = Context(rec=rec, tmp=tmp, limits=Limits().scaled(time_scale))
        try:
            _hypothesis_run(campaign, ctx, seed_value, examples)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _hypothesis_run(campaign: Campaign, ctx: Context, seed_value: int, examples: int) -> None:
    """Runs ``campaign`` on ``examples`` hypothesis examples seeded with ``seed_value``."""

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate,), print_blob=False)
    @given(st.data())
    def test(data: st.DataObject) -> None:
        """One example of the campaign."""
        campaign(ctx, data)

    test()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.worker", description=__doc__.splitlines()[0])
    parser.add_argument("campaign", choices=sorted(CAMPAIGNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--log", default=os.devnull, help="file that receives each case before it runs")
    parser.add_argument("--memory-gib", type=float, default=DEFAULT_MEMORY_GIB,
                        help="address-space cap in GiB (0: none)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every time limit")
    parser.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                        help="do not run cases whose description matches this fnmatch pattern (a known problem)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one campaign; the exit status (see the module docstring)."""
    args = parse_args(argv)
    faulthandler.enable()
    warnings.simplefilter("ignore")  # numpy's casting warnings on hostile arrays are expected noise
    limit_memory(args.memory_gib)
    import unet_rt  # noqa: F401  (imported before the clock starts: torch takes seconds)

    rec = run_campaign(args.campaign, args.seed, args.examples, args.log, args.time_scale, args.skip)
    print(rec.summary(), flush=True)
    return 1 if rec.violations else 0


if __name__ == "__main__":
    sys.exit(main())
