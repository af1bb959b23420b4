"""Type stubs of the compiled extension (the Rust core's bindings)."""

from typing import Optional

import numpy as np
import numpy.typing as npt

__version__: str

def build_info() -> dict[str, object]: ...

class Model:
    def __init__(self, path: str, device: str = "cpu") -> None: ...
    @property
    def metadata_json(self) -> Optional[str]: ...
    @property
    def path(self) -> str: ...
    @property
    def device(self) -> str: ...
    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
