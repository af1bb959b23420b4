"""Running block tasks: on a distributed client (futures, scattered
shared values, a tree reduction on the workers) or in this process, with one
progress report (a bar, or a ``progress(done, total)`` callable) counting
blocks."""

from __future__ import annotations

import sys
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..model import ProgressArg, check_progress
from ._array import tree_reduce

__all__ = ["Runner", "FAN_IN"]

# Statistics combined per group: bounded fan-in keeps a combining task small.
FAN_IN = 8


class Runner:
    """Runs block tasks on a distributed client, or in this process."""

    def __init__(self, client: Any, progress: ProgressArg) -> None:
        if client is False:
            client = None
        elif client is None:
            try:
                from distributed import default_client

                client = default_client()
            except (ImportError, ValueError):
                client = None
        self.client = client
        self.progress = check_progress(progress)
        self.token = uuid.uuid4().hex[:8]
        self._count = 0

    def _key(self, name: str) -> str:
        self._count += 1
        return f"unet_rt-{name}-{self.token}-{self._count}"

    def _share(self, value: Any) -> Any:
        from distributed import Future

        if value is None or isinstance(value, Future) or (isinstance(value, np.ndarray) and value.nbytes < 4096):
            return value
        return self.client.scatter(value, broadcast=False, hash=False)

    def run(self, fn: Callable[..., int], calls: List[Tuple[tuple, dict]], shared: Dict[str, Any], total: int, desc: str,
            resources: Optional[Dict[str, float]] = None) -> None:
        """Runs ``fn(*args, **kwargs, **shared)`` for each call, with a bar."""
        with _Bar(self.progress, total, total - len(calls), desc) as bar:
            if self.client is None:
                for args, kwargs in calls:
                    fn(*args, **kwargs, **shared)
                    bar.update(1)
                return
            from distributed import as_completed

            common = {k: self._share(v) for k, v in shared.items()}
            futures = [self.client.submit(fn, *args, **kwargs, **common, key=self._key(desc.split()[-1]),
                                          resources=resources) for args, kwargs in calls]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                self.client.cancel(futures)
                raise

    def map(self, fn: Callable[..., Any], calls: List[Tuple[tuple, dict]], desc: str) -> List[Any]:
        """``fn`` for each call: results (locally) or futures (on a cluster)."""
        if self.client is None:
            return [fn(*args, **kwargs) for args, kwargs in calls]
        return [self.client.submit(fn, *args, **kwargs, key=self._key("summary")) for args, kwargs in calls]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (on a worker when there is a cluster, where the
        result stays: a future that later tasks take as an argument)."""
        if self.client is None:
            return fn(*args)
        return self.client.submit(fn, *args, key=self._key("merge"))

    def reduce(
        self, fn: Callable[..., Any], calls: List[Tuple[tuple, dict]], combine: Callable[..., Any], finish: Callable[..., Any], desc: str
    ) -> Any:
        """``finish`` of the results of ``fn`` over ``calls``, combined in
        groups on the workers; only the final (small) result comes back."""
        # A progress callable counts written blocks; only bars show this pass.
        with _Bar(self.progress if self.progress is True else None, len(calls), 0, desc) as bar:
            if self.client is None:
                parts: List[Any] = []
                for args, kwargs in calls:
                    parts.append(fn(*args, **kwargs))
                    bar.update(1)
                    if len(parts) == FAN_IN:
                        parts = [combine(*parts)]
                return finish(*parts)
            from distributed import as_completed

            submit = self.client.submit
            futures = [submit(fn, *args, **kwargs, key=self._key("stats")) for args, kwargs in calls]
            final = tree_reduce(
                list(futures),
                lambda group: submit(combine, *group, key=self._key("combine")),
                lambda group: submit(finish, *group, key=self._key("finish")),
                FAN_IN,
            )
            for _ in as_completed(futures):
                bar.update(1)
            return final.result()


class _Bar:
    def __init__(self, progress: ProgressArg, total: int, initial: int, desc: str) -> None:
        self.progress, self.total, self.done, self.desc, self.bar = progress, total, initial, desc, None

    def __enter__(self) -> "_Bar":
        if self.progress is True:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, initial=self.done, unit="block", desc=self.desc)
            except ImportError:
                self.bar = None
        self._report()
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._report()

    def _report(self) -> None:
        if callable(self.progress) and self.progress is not True:
            self.progress(self.done, self.total)
        elif self.progress is True and self.bar is None:
            print(f"\r{self.desc}: {self.done}/{self.total} blocks", end="\n" if self.done >= self.total else "", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
