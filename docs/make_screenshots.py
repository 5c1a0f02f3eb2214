"""Screenshots for docs/user-guide.md, taken from a real napari window.

Run from the repository root (no display needed with Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Writes docs/images/*.png: each step of the user guide on the bundled sample data, with the
shipped model on the CPU. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

from qtpy.QtWidgets import QApplication

import napari

IMAGES = Path(__file__).resolve().parent / "images"
SIZE = (1600, 900)  # window width, height in px: a laptop screen


def wait(widget, timeout: float = 300.0) -> None:
    """Process Qt events until the widget's job has finished."""
    start = time.monotonic()
    while widget.busy or widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{widget.action} did not finish in {timeout} s")
    settle()


def settle(seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def shoot(viewer, name: str) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # e.g. napari's PyQt5 deprecation notice
    settle()
    path = IMAGES / name
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path}")


def identify_actin(viewer, setting: str, value) -> None:
    """A fresh viewer state: the real actin sample identified with one widget setting
    changed (e.g. the tile size or the model); the PSF layer hidden."""
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    [actin] = viewer.open_sample("napari-deepblur", "blurred_actin")
    _, identify = viewer.window.add_plugin_dock_widget("napari-deepblur", "Identify blur")
    identify._device.value = "cpu"
    identify._image_layer.value = actin
    getattr(identify, setting).value = value
    identify.run()
    wait(identify)
    viewer.layers[f"{actin.name} PSF"].visible = False
    viewer.reset_view()


def main() -> int:
    IMAGES.mkdir(exist_ok=True)
    warnings.filterwarnings("ignore")  # no deprecation toasts over the canvas
    viewer = napari.Viewer(title="napari — Deep-Blur")
    viewer.window._qt_window.resize(*SIZE)
    viewer.window._qt_window.move(0, 0)

    # 1. the sample and the Identify blur dock
    [raw] = viewer.open_sample("napari-deepblur", "blurred_fluorescence")
    identify_dock, identify = viewer.window.add_plugin_dock_widget(
        "napari-deepblur", "Identify blur"
    )
    identify._device.value = "cpu"
    viewer.reset_view()
    shoot(viewer, "01-open-sample-identify.png")

    # 2. Identify blur: the PSF layer, the table of aberrations
    identify.run()
    wait(identify)
    viewer.reset_view()
    shoot(viewer, "02-identify-result.png")

    # 3. Deblur (with the PSF just identified)
    # (a tab beside Identify: stacked under it, the Deblur dock would show two rows)
    _, deblur = viewer.window.add_plugin_dock_widget("napari-deepblur", "Deblur", tabify=True)
    deblur._device.value = "cpu"
    deblur._image_layer.value = raw
    deblur.run()
    wait(deblur)
    shoot(viewer, "03-deblur-result.png")

    # 4. Compare side by side
    deblur._compare_button.native.click()
    viewer.reset_view()
    shoot(viewer, "04-compare.png")
    deblur._compare_button.native.click()

    # 5. Export the PSF (TIFF + JSON) and open it again
    folder = Path(tempfile.mkdtemp())
    identify._export_path.value = folder / "sample.psf.tif"
    identify._export_button.native.click()
    viewer.layers[f"{raw.name} deblurred"].visible = False
    [psf] = viewer.open(str(folder / "sample.psf.tif"), plugin="napari-deepblur")
    identify_dock.raise_()  # the Identify tab, where Export is
    # the reopened PSF, placed beside its image, about 400 px wide
    viewer.camera.center = tuple(
        t + 15.5 * s for t, s in zip(psf.translate, psf.scale, strict=True)
    )
    viewer.camera.zoom = 400 / (31 * psf.scale[-1])
    shoot(viewer, "05-export-and-reopen.png")

    # 6. A map of local PSFs across the field (the real-looking sample, 128 px tiles)
    identify_actin(viewer, "_tile_px", 128)
    shoot(viewer, "06-psf-map.png")

    # 7. Calibrate from beads (the confocal bead plane shipped with the tests)
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    beads_path = Path(__file__).resolve().parents[1] / "tests" / "data" / "beads_confocal_plane.tif"
    [beads] = viewer.open(str(beads_path))
    _, calibrate = viewer.window.add_plugin_dock_widget("napari-deepblur", "Calibrate from beads")
    calibrate._image_layer.value = beads
    calibrate._pixel_size.value = 22.0  # (the file says 22.49; the source states 22)
    calibrate.run()  # Eigen-PSFs and Map degree on auto: what four beads determine
    wait(calibrate)
    viewer.reset_view()
    shoot(viewer, "07-calibrate-beads.png")

    # 8. Space-varying blur: the field-default model's kernel map on the real actin sample
    identify_actin(viewer, "_model", "field-default")
    shoot(viewer, "08-kernel-map.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
