"""The way of an image through ``deepblur deblur`` (identify first, then deblur, then the
file): every call of a function of the package, in order, with the counts of the work done
to the image on the way (resamplings, scans for NaN, intensity ranges, noise estimates).

Run: ``python docs/experiments/call_path.py [--tree]`` (``--tree``: all the calls, as an
indented tree; the networks' internals are left out). Used for the house issue's
before / after on the shipped sample ``bpae_actin_400.tif`` (optics of the sample).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

import napari_deepblur
from napari_deepblur import cli

PACKAGE = Path(napari_deepblur.__file__).parent
SKIP = ("nets",)  # inside the networks: torch modules, not the image's way
COMPREHENSIONS = ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>")
#: Functions that do work to the whole image, counted on the way (by name, in any module).
WORK = {
    "resample": "resampled (zoom)",
    "check_finite": "scanned for NaN/Inf",
    "_check_finite": "scanned for NaN/Inf",
    "robust_range": "intensity range",
    "estimate_noise": "noise estimated",
    "image_noise": "noise estimated",
    "deblur_noise": "noise for deblurring",
}


#: DESIGN.md's floors, lowest first, with the modules of before the house issue in theirs.
FLOORS = [
    ("optics", "nets", "devices", "notices", "intensity"),
    ("models",),
    ("pipeline", "estimation", "refinement", "field_estimation", "fieldmap", "__init__"),
    ("field", "formats", "io", "outputs", "batch", "beads", "calibration"),
    ("training", "evaluation", "samples", "demo", "_sample_data"),
    ("cli", "_napari", "calibration_cli", "family_cli"),
]


@dataclass
class Call:
    depth: int
    name: str  # module.function
    plane: bool  # given a whole plane of the image
    climbs: bool  # called from a module on a lower floor


def floor(module: str) -> int:
    top = module.split(".")[0]
    return next((i for i, names in enumerate(FLOORS) if top in names), len(FLOORS))


def carries_plane(frame, plane_px: int) -> bool:
    """Whether one of the arguments of ``frame``'s function is a whole plane of the image (an
    array-like of at least half its pixels: the image, resampled or normalised, not a tile)."""
    for value in frame.f_locals.values():
        shape = getattr(value, "shape", None)
        if (
            isinstance(shape, tuple)
            and len(shape) >= 2
            and shape
            and all(isinstance(n, int) for n in shape)
        ):
            if int(np.prod(shape)) >= plane_px // 2:
                return True
    return False


def trace(argv: list[str], plane_px: int) -> list[Call]:
    """Each call of a package function while ``argv`` runs (the networks' internals left out)."""
    calls: list[Call] = []
    caller_of: dict[int, Call] = {}

    def profile(frame, event, arg):
        if event == "return":  # a finished frame's id may be reused by the next one
            caller_of.pop(id(frame), None)
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if PACKAGE not in path.parents:
            return
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.split(".")[0] in SKIP or frame.f_code.co_name in COMPREHENSIONS:
            return
        parent = frame.f_back
        while parent is not None and id(parent) not in caller_of:
            parent = parent.f_back
        caller = caller_of.get(id(parent)) if parent is not None else None
        resumed = bool(frame.f_code.co_flags & 0x20) and frame.f_lasti > 0  # CO_GENERATOR
        method = frame.f_code.co_name.startswith("__")  # an object's method, not an import
        call = Call(
            depth=caller.depth + 1 if caller else 0,
            name=f"{module}.{frame.f_code.co_name}",
            plane=carries_plane(frame, plane_px),
            climbs=bool(caller)
            and not resumed
            and not method
            and floor(module) > floor(caller.name.rsplit(".", 1)[0]),
        )
        caller_of[id(frame)] = call
        calls.append(call)

    sys.setprofile(profile)
    try:
        cli.main(argv)
    except SystemExit as stop:
        if stop.code:
            raise
    finally:
        sys.setprofile(None)
    return calls


def first_calls(calls: list[Call]) -> list[str]:
    """The distinct functions of ``calls``, in the order of their first call."""
    return list(dict.fromkeys(call.name for call in calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="store_true", help="print the calls as a tree")
    parser.add_argument("--image", default=str(PACKAGE / "data" / "bpae_actin_400.tif"))
    args = parser.parse_args()
    plane_px = int(np.prod(tifffile.imread(args.image).shape[-2:]))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "restored.tif"
        argv = ["deblur", args.image, "-o", str(out), "--quiet", "--precision", "float32"]
        calls = trace(argv, plane_px)
    if args.tree:
        for call in calls:
            print("  " * call.depth + call.name + (" [plane]" if call.plane else ""))
    way = first_calls([call for call in calls if call.plane])
    print(f"functions given a whole plane of the image, in order ({len(way)}):")
    for name in way:
        print("  " + name)
    modules = [call.name.rsplit(".", 1)[0] for call in calls if call.plane]
    hops = sum(
        a.split(".")[0] != b.split(".")[0] for a, b in zip(modules, modules[1:], strict=False)
    )
    print(f"calls given a whole plane: {len(modules)}; moves between top-level modules: {hops}")
    print(f"calls that climb to a higher floor: {sum(call.climbs for call in calls)}")
    print(f"calls of package functions: {len(calls)} ({len(first_calls(calls))} functions)")
    work = Counter()
    for call in calls:
        label = WORK.get(call.name.rsplit(".", 1)[1])
        if label:
            work[label] += 1
    for label in sorted(set(WORK.values())):
        print(f"  {label}: {work[label]}")


if __name__ == "__main__":
    main()
