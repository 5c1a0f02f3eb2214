"""The napari dock widgets (everything here imports magicgui/napari/Qt).

- :class:`IdentifyWidget` ("Identify blur"), :class:`DeblurWidget` ("Deblur"), and
  :class:`DeepBlurPanel` (both in one dock); :class:`CalibrateWidget` ("Calibrate from beads");
- their logic, testable without a viewer, is in :mod:`napari_deepblur._napari`.
"""

from ._calibrate import CalibrateWidget
from ._deblur import DeblurWidget
from ._identify import IdentifyWidget
from ._panel import DeepBlurPanel

__all__ = ["CalibrateWidget", "DeblurWidget", "DeepBlurPanel", "IdentifyWidget"]
