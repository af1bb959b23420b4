"""Type stubs of the compiled extension (the Rust core's bindings).

The public API is :mod:`unet_rt` (``unet_rt.Model``, ``unet_rt.segment``);
this module is its engine and converts arguments only.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
#: Bytes of activations a batch may use by default, per device kind.
DEFAULT_CPU_BUDGET: int
DEFAULT_PRECISION: str
DEFAULT_CUDA_BUDGET: int
#: NumPy dtype names of the pixels the engine reads.
PIXEL_DTYPES: List[str]
#: The output modes' names.
OUTPUTS: List[str]
#: The test-time augmentation modes' names.
TTA_MODES: List[str]

def canonical_precision(text: str) -> str: ...
def build_info() -> dict[str, object]: ...
def connected_components(labels: npt.NDArray[Any]) -> npt.NDArray[np.uint32]: ...
def instance_context(read_out: str) -> int: ...
def read_out_instances(labels: npt.NDArray[Any], read_out: str) -> npt.NDArray[np.uint32]: ...
def instance_block(
    labels: npt.NDArray[Any], context: Sequence[Tuple[int, int]], read_out: str
) -> Tuple[npt.NDArray[np.uint32], int, List[Tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]]]: ...
def error_class_names() -> List[str]: ...

class Model:
    def __init__(self, path: str, device: str = "auto", precision: str = "fp32") -> None: ...
    @staticmethod
    def from_bytes(data: bytes, name: str, device: str = "auto", precision: str = "fp32") -> "Model": ...
    @property
    def metadata_json(self) -> Optional[str]: ...
    @property
    def info(self) -> dict[str, Any]: ...
    @property
    def path(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def devices(self) -> List[str]: ...
    @property
    def precision(self) -> str: ...
    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def segment(
        self,
        image: npt.NDArray[Any],  # a batch (N, C, spatial...); the result is (N, ...)
        output: str = "labels",
        tile: Union[int, Sequence[int], str, None] = None,
        batch_size: Optional[int] = None,
        memory_budget: Optional[int] = None,
        out: Optional[npt.NDArray[Any]] = None,
        progress: Optional[Callable[[int, int], object]] = None,
        blend: str = "crop",
        window: Optional[Tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]] = None,
        input_range: Optional[Sequence[Tuple[float, float]]] = None,
        nonfinite: str = "raise",
        tta: str = "none",
        object_size: Optional[float] = None,
        min_size: Optional[int] = None,
        fill_holes: Optional[bool] = None,
    ) -> npt.NDArray[Any]: ...
    def read_out(self, min_size: Optional[int] = None, fill_holes: Optional[bool] = None) -> str: ...
    def result_dtype(self, output: str) -> str: ...
    def result_shape(self, spatial: Sequence[int], output: str) -> List[int]: ...
    def layout(
        self,
        shape: Sequence[int],
        tile: Union[int, Sequence[int], str, None] = None,
        batch_size: Optional[int] = None,
        memory_budget: Optional[int] = None,
        device: Optional[str] = None,
        precision: Optional[str] = None,
    ) -> dict[str, Any]: ...
    def needed_inputs(
        self,
        windows: Sequence[Tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]],
        tile: Union[int, Sequence[int], str, None] = None,
        batch_size: Optional[int] = None,
        memory_budget: Optional[int] = None,
    ) -> List[Tuple[List[int], List[int]]]: ...
    def percentile_range(self, image: npt.NDArray[Any]) -> Optional[Tuple[float, float]]: ...
    def result_array(self, shape: Sequence[int], output: str) -> npt.NDArray[Any]: ...

def check_image_copy(nbytes: int) -> None: ...
def arrangement(shape: Sequence[int], axes: Optional[str], spatial_dims: int, in_channels: int) -> Tuple[str, List[Optional[int]]]: ...
def infer_axes(shape: Sequence[int], spatial_dims: int, in_channels: int) -> str: ...

# Percentile statistics of one image: (first, counts) for a histogram
# (uint64 counts; bin i counts the value first + i), (None, values) for the
# engine's float64 sample.
_ImageStats = Tuple[Optional[float], npt.NDArray[Any]]

def percentile_stats(block: npt.NDArray[Any], origin: Sequence[int], image_shape: Sequence[int]) -> Dict[int, _ImageStats]: ...
def combine_percentile_stats(parts: Sequence[Dict[int, _ImageStats]]) -> Dict[int, _ImageStats]: ...
def percentile_ranges(parts: Sequence[Dict[int, _ImageStats]], images: int, low: float, high: float) -> npt.NDArray[np.float64]: ...
