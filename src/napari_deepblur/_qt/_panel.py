"""Both steps in one dock: Identify blur, then Deblur (each also has its own dock)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label

from ._deblur import DeblurWidget
from ._identify import IdentifyWidget
from ._job import ScrollableDock, _RemovalFilter

if TYPE_CHECKING:
    import napari


class DeepBlurPanel(ScrollableDock, Container):
    """``_identify`` (:class:`IdentifyWidget`) above ``_deblur`` (:class:`DeblurWidget`);
    a PSF identified above becomes the Deblur step's estimate."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False, scrollable=True)
        self._identify = IdentifyWidget(viewer, scrollable=False)
        self._deblur = DeblurWidget(viewer, scrollable=False)
        self.extend(
            [
                Label(value="<b>1. Identify blur</b>"),
                self._identify,
                Label(value="<b>2. Deblur</b>"),
                self._deblur,
            ]
        )
        # closing the panel's dock stops the jobs of both steps
        self._removal_filter = _RemovalFilter(self._on_closed)
        self.native.installEventFilter(self._removal_filter)

    def _on_closed(self) -> None:
        for step in (self._identify, self._deblur):
            step._on_closed()
