"""Headless multi-view renderer of 3D assets (training data for the multi-view model).

Rendering goes through OpenGL 3.3 with `moderngl <https://github.com/moderngl/moderngl>`_ on an EGL
context without any display. On a machine without a GPU, Mesa's ``llvmpipe`` software rasteriser does
the work (a few milliseconds per view at 256x256). System packages (Debian/Ubuntu)::

    apt-get install -y libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri

plus ``pip install moderngl trimesh``.

Camera convention: the project's one (:mod:`mvdream3d.cameras`). ``Renderer.render`` takes an OpenGL
camera-to-world matrix (camera looks along its -z, +y up) and a **vertical** field of view; a world
point lands on the pixel that ``cameras.get_rays`` casts through it (image row 0 is the top, pixel
centres at ``(j + 0.5, i + 0.5)``, principal point at the image centre, ``cameras.intrinsics_from_fov``).

Data recipe (``render_asset``), after the MVDream paper: ``num_views`` views at evenly spaced azimuths
starting at 0 (azimuth 0 looks from +z at the origin), each with its own random elevation, field of view
and *relative* camera distance::

    distance = d * r / sin(fov / 2),   d ~ U(distance_range),  r = bounding radius of the object

``r`` is the radius of the sphere centred at the origin (the centre of the normalised object's bounding
box) that holds every vertex, so at ``d = 1`` this sphere exactly touches the top and bottom of the
image whatever the fov: the object fills a similar fraction of every frame. (This is the "sphere" form,
``r / sin``; ``cameras.camera_distance_for_fov`` is the threestudio "plane" form ``r / tan``.)

Output of one asset: ``rgba_000.png ...`` (RGBA, transparent background, straight alpha) and
``meta.json`` (written last: its presence marks the asset as done, which makes runs resumable).

Where each part lives: asset loading and material baking in :mod:`~mvdream3d.data.assets`, the GL
renderer in :mod:`~mvdream3d.data.gl_renderer`, the data recipe and writer in :mod:`~mvdream3d.data.writer`;
this module holds the ``render`` command and re-exports their public names.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from .assets import ASSET_EXTENSIONS, LIGHT_GREY, AssetWarning, bounding_radius, find_assets, load_asset
from .gl_renderer import Renderer
from .writer import DISTANCE_RULE, render_asset, render_assets, view_distance

__all__ = [
    "ASSET_EXTENSIONS",
    "DISTANCE_RULE",
    "LIGHT_GREY",
    "AssetWarning",
    "Renderer",
    "add_render_subparser",
    "bounding_radius",
    "cmd_render",
    "find_assets",
    "load_asset",
    "render_asset",
    "render_assets",
    "view_distance",
]


def add_render_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``render`` to a ``parser.add_subparsers()`` object (handler: ``cmd_render``)."""
    p = subparsers.add_parser(
        "render",
        help="render 3D assets into multi-view training data (RGBA views + cameras)",
        description="Render each asset (.obj/.glb/.gltf/.ply; folders are searched recursively) from "
        "evenly spaced azimuths with random elevation, fov and relative distance into OUT/<stem>/ "
        "(rgba_XXX.png + meta.json). Assets already done are skipped.",
    )
    p.add_argument("assets", nargs="+", metavar="ASSET", help="mesh files or folders")
    p.add_argument("--out", required=True, help="output root directory")
    p.add_argument("--views", type=int, default=32, help="views per asset (default 32)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--elevation-range", type=float, nargs=2, default=(0.0, 30.0), metavar=("MIN", "MAX"))
    p.add_argument("--fov-range", type=float, nargs=2, default=(15.0, 60.0), metavar=("MIN", "MAX"))
    p.add_argument("--distance-range", type=float, nargs=2, default=(0.9, 1.1), metavar=("MIN", "MAX"),
                   help="relative distance d: distance = d * r / sin(fov/2) (default 0.9 1.1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--caption", default=None, help="caption for every asset (default: ASSET.txt or the name)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_render)
    return p


def _print_warnings_plainly():
    """Context manager: show warnings as one ``warning: ...`` line on stderr."""
    from tqdm.auto import tqdm

    cm = warnings.catch_warnings()

    class _Ctx:
        def __enter__(self):
            cm.__enter__()
            warnings.simplefilter("always", AssetWarning)
            warnings.showwarning = lambda message, *a, **k: tqdm.write(f"warning: {message}", file=sys.stderr)
            return self

        def __exit__(self, *exc):
            return cm.__exit__(*exc)

    return _Ctx()


def cmd_render(args: argparse.Namespace) -> int:
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    if args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    t0 = time.perf_counter()
    with _print_warnings_plainly():
        res = render_assets(
            args.assets, args.out, workers=args.workers, num_views=args.views, size=args.size,
            elevation_range=tuple(args.elevation_range), fov_range=tuple(args.fov_range),
            distance_range=tuple(args.distance_range), caption=args.caption, seed=args.seed,
        )
    print(
        f"rendered {len(res['rendered'])} assets ({len(res['skipped'])} already done, "
        f"{len(res['failed'])} failed) into {res['out']} in {time.perf_counter() - t0:.1f} s"
    )
    return 0
