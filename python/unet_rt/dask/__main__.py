"""``python -m unet_rt.dask SOURCE.zarr DESTINATION.zarr --model M``: segment
a zarr array into a zarr group on a Dask cluster, resumably.

Examples::

    # on 4 local worker processes
    python -m unet_rt.dask image.zarr out.zarr --model model.pt --local-workers 4
    # on a running cluster (one worker process per GPU), probabilities
    python -m unet_rt.dask s3://bucket/image.zarr s3://bucket/out.zarr --model /shared/model.pt \\
        --scheduler tcp://scheduler:8786 --output probabilities

Rerunning the same command after an interruption resumes: blocks already
written are skipped. Exit status: 0 done, 1 failure (the source's pixels
included: NaN without ``--nonfinite propagate``, a type the engine does not
read; a destination that cannot be written), 2 usage (a flag, a model file missing or
not a model, a device this machine lacks, a destination refused), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import ExitStack
from typing import List, Optional

from ..model import DEFAULT_PRECISION, NONFINITE_MODES, OUTPUTS, TTA_MODES

__all__ = ["main"]


def _at_least_one(text: str) -> int:
    """A count of workers or threads: a whole number, 1 or more (with -1 a
    local cluster started no worker and the run waited forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unet_rt.dask",
        description="Segment a zarr array into a zarr group on a Dask cluster (resumable).",
        epilog="Rerun the same command to resume an interrupted run.",
    )
    parser.add_argument("source", help="the input zarr array or OME-Zarr image (path or URL)")
    parser.add_argument("destination", help="the output zarr group (path or URL), or the OME-Zarr image to add labels to; "
                        "created when missing")
    parser.add_argument("--model", "-m", default=None, help="model file (.pt), readable on every worker; default: the bundled model")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--local-workers", type=_at_least_one, metavar="N", help="start N local worker processes for this run")
    parser.add_argument("--threads-per-worker", type=_at_least_one, default=None, metavar="T",
                        help="libtorch threads per local worker (default: the cores divided among the workers)")
    parser.add_argument("--output", "-o", default="labels", choices=list(OUTPUTS))
    parser.add_argument("--axes", default=None, help="axes of the source, e.g. yx, cyx, yxc, zyx, byx (inferred when unambiguous)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (per worker; default auto)")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=["auto", "fp32", "bf16", "fp16"],
                        help=f"default {DEFAULT_PRECISION}; auto is bf16 where the hardware runs it fast")
    parser.add_argument("--normalize", default="global", choices=["global", "block"],
                        help="percentile normalization over the whole image (default) or per block")
    parser.add_argument("--block", type=int, default=None, help="spatial block size per task (default ~1024 in 2-D, 128 in 3-D)")
    parser.add_argument("--tile", type=int, default=None, help="input tile size (default: chosen for the whole image as unet-rt chooses it: "
                        "the fastest on the CPU, the largest within the memory budget on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: chosen)")
    parser.add_argument("--tta", default="none", choices=list(TTA_MODES),
                        help="test-time augmentation: flips (4 passes per tile in 2-D) or d4 (8); default none")
    parser.add_argument("--nonfinite", default="raise", choices=list(NONFINITE_MODES),
                        help="NaN or infinity in the source or the network's output: raise (stop at that block, "
                             "naming it; default) or propagate (let them through to the result)")
    parser.add_argument("--min-size", type=int, default=None,
                        help="instances: remove objects of fewer pixels (default: the model's read-out)")
    parser.add_argument("--fill-holes", default=None, choices=["yes", "no"],
                        help="instances: fill background enclosed by one object (default: the model's read-out)")
    parser.add_argument("--chunks", type=int, default=None, help="spatial chunk size of a new destination (default: the block)")
    parser.add_argument("--shards", type=int, default=None, help="spatial shard size of a new destination (zarr v3)")
    parser.add_argument("--resources", default=None, metavar="NAME=N[,NAME=N]",
                        help="worker resources each segmentation task claims, e.g. GPU=1 (workers started with --resources)")
    ome = parser.add_mutually_exclusive_group()
    ome.add_argument("--ome", dest="ome", action="store_true", default=None,
                     help="write an OME-Zarr label image (destination/labels/<output>); default when the source is OME-Zarr")
    ome.add_argument("--no-ome", dest="ome", action="store_false", help="write a plain zarr group even for OME-Zarr sources")
    parser.add_argument("--levels", type=int, default=None,
                        help="resolution levels of the OME-Zarr label image (default: the source image's, else 1)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="overwrite the destination instead of resuming")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


# segment_to_zarr's keywords that are flags here, as "invalid NAME:" names them.
_FLAGS = ("axes", "block", "tile", "batch_size", "min_size", "chunks", "shards", "levels", "model", "output",
          "device", "precision", "normalize", "tta", "nonfinite", "fill_holes", "resources")


def _in_flags(message: str) -> str:
    """``segment_to_zarr``'s message with its keyword arguments spelled as
    this command's flags ("pass resume=False" named no flag here).

    >>> _in_flags("pass resume=False to start over")
    'pass --no-resume to start over'
    >>> _in_flags("invalid block: 3 px is under ...; pass a block of at least 60 (chunks=)")
    'invalid --block: 3 px is under ...; pass a block of at least 60 (--chunks)'
    >>> _in_flags("invalid batch_size: 0")
    'invalid --batch-size: 0'
    >>> _in_flags("invalid levels: 3; ... for OME-Zarr label images (ome=True)")
    'invalid --levels: 3; ... for OME-Zarr label images (--ome)'
    """
    for keyword, flag in (("resume=False", "--no-resume"), ("chunks=)", "--chunks)"),
                          ('nonfinite="propagate"', "--nonfinite propagate"), ("ome=False", "--no-ome"),
                          ("ome=True", "--ome")):
        message = message.replace(keyword, flag)
    for name in _FLAGS:
        if message.startswith(f"invalid {name}:"):
            return f"invalid --{name.replace('_', '-')}:{message[len(name) + 9:]}"
    return message


def _usage_status(error: Exception) -> int:
    """The exit status of an invalid argument: 1 where it is the source's
    data (as the ``unet-rt`` command's failed input), 2 where the command
    line must change.

    >>> _usage_status(ValueError("invalid image: holds NaN or infinite values"))
    1
    >>> _usage_status(ValueError("invalid tile: 3 is below the smallest tile"))
    2
    """
    return 1 if str(error).startswith(("invalid image:", "invalid source:")) else 2


def _os_error(error: OSError) -> str:
    """An operating system's refusal as the file and its reason (Python's
    own text leads with "[Errno 2]").

    >>> _os_error(FileNotFoundError(2, "No such file or directory", "/proc/x.zarr"))
    '/proc/x.zarr: No such file or directory'
    >>> _os_error(OSError("no such bucket"))
    'no such bucket'
    """
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    resources = None
    if args.resources:
        try:
            resources = {k.strip(): float(v) for k, v in (item.split("=") for item in args.resources.split(","))}
        except ValueError:
            parser.error(f"--resources: expected NAME=N[,NAME=N], got {args.resources!r}")
    from ..errors import DeviceError, InvalidArgumentError, MetadataError, ModelError, ModelNotFoundError, UnetRtError
    from . import segment_to_zarr

    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            client = None
            if args.scheduler or args.local_workers:
                import dask
                from distributed import Client, LocalCluster

                if args.scheduler:
                    client = stack.enter_context(Client(args.scheduler))
                else:
                    # One task at a time per worker, whose libtorch uses T
                    # threads (Dask sets OMP_NUM_THREADS=MKL_NUM_THREADS=1).
                    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // args.local_workers)
                    stack.enter_context(dask.config.set({
                        f"distributed.nanny.pre-spawn-environ.{name}": threads
                        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                    }))
                    cluster = stack.enter_context(
                        LocalCluster(
                            n_workers=args.local_workers,
                            threads_per_worker=1,
                            processes=True,
                            dashboard_address=None,
                            # A failed task is this command's one-line
                            # error; the workers' own report of it (its
                            # traceback, logged as an error) came first.
                            silence_logs=logging.CRITICAL,
                            # /health and /metrics on a free port, not 8787.
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        )
                    )
                    client = stack.enter_context(Client(cluster))
            result = segment_to_zarr(
                args.source,
                args.destination,
                args.model,
                client=client,
                resume=args.resume,
                progress=args.progress and sys.stderr.isatty(),
                axes=args.axes,
                output=args.output,
                device=args.device,
                precision=args.precision,
                normalize=args.normalize,
                block=args.block,
                chunks=args.chunks,
                shards=args.shards,
                tile=args.tile,
                batch_size=args.batch_size,
                tta=args.tta,
                nonfinite=args.nonfinite,
                min_size=args.min_size,
                fill_holes=None if args.fill_holes is None else args.fill_holes == "yes",
                resources=resources,
                ome=args.ome,
                levels=args.levels,
            )
    except KeyboardInterrupt:
        print("unet_rt.dask: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except InvalidArgumentError as e:
        print(f"unet_rt.dask: error: {_in_flags(str(e))}", file=sys.stderr)
        return _usage_status(e)
    except (ModelNotFoundError, ModelError, MetadataError, DeviceError) as e:
        # The command line must change, as unet-rt's exit status says (was 1).
        print(f"unet_rt.dask: error: {_in_flags(str(e))}", file=sys.stderr)
        return 2
    except (UnetRtError, OSError, ValueError) as e:
        text = _os_error(e) if isinstance(e, OSError) and not isinstance(e, UnetRtError) else str(e)
        print(f"unet_rt.dask: error: {_in_flags(text)}", file=sys.stderr)
        return 1
    print(f"{args.destination.rstrip('/')}/{result.path}: shape {tuple(result.shape)}, {result.dtype}, "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
