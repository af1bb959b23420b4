"""The napari plugin (``pip install 'unet_rt[napari]'``): a *Segment*
dock widget (Plugins > unet_rt > Segment) that segments the selected image
layer into a labels layer off the GUI thread, with a progress bar and
cancellation, and the nuclei sample image (File > Open Sample > unet_rt).

The plugin is declared by ``napari.yaml`` (npe2) and found through the
``napari.manifest`` entry point."""

from __future__ import annotations

from ._sample import nuclei_sample
from ._widget import SegmentWidget

__all__ = ["SegmentWidget", "nuclei_sample"]
