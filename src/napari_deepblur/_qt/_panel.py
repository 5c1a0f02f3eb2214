"""Both steps in one dock: Identify blur, then Deblur (each also has its own dock)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label

from ._deblur import DeblurWidget
from ._identify import IdentifyWidget

if TYPE_CHECKING:
    import napari


class DeepBlurPanel(Container):
    """``_identify`` (:class:`IdentifyWidget`) above ``_deblur`` (:class:`DeblurWidget`);
    a PSF identified above becomes the Deblur step's estimate."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._identify = IdentifyWidget(viewer)
        self._deblur = DeblurWidget(viewer)
        self.extend(
            [
                Label(value="<b>1. Identify blur</b>"),
                self._identify,
                Label(value="<b>2. Deblur</b>"),
                self._deblur,
            ]
        )
