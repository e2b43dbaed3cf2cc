"""The multi-view data set writer (the data recipe): views of each asset at evenly spaced azimuths with
random elevation, fov and relative distance, written as ``rgba_XXX.png`` + ``meta.json`` (written last,
so a run resumes). The recipe is described in :mod:`mvdream3d.data.render`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes, ensure_writable_dir
from .assets import AssetWarning, bounding_radius, find_assets, load_asset
from .gl_renderer import Renderer, _shared_renderer

__all__ = ["DISTANCE_RULE", "render_asset", "render_assets", "view_distance"]

DISTANCE_RULE = "distance = relative_distance * radius / sin(fov_deg / 2)"


def _atomic_save_png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=4)
    atomic_write_bytes(path, buf.getvalue())


def _clean_temp_files(out_dir: Path) -> None:
    for p in out_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def _check_range(name: str, r: Sequence[float], lo: float | None = None, hi: float | None = None) -> tuple:
    try:
        a, b = (float(x) for x in r)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (min, max), got {r!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise ValueError(f"{name} must be finite with min <= max, got ({a}, {b})")
    if lo is not None and a <= lo:
        raise ValueError(f"{name} must be > {lo}, got ({a}, {b})")
    if hi is not None and b >= hi:
        raise ValueError(f"{name} must be < {hi}, got ({a}, {b})")
    return a, b


def view_distance(d: float | np.ndarray, radius: float, fov_deg: float | np.ndarray) -> Any:
    """The recipe's relative camera distance ``d * radius / sin(fov / 2)`` (see :mod:`mvdream3d.data.render`)."""
    return np.asarray(d) * radius / np.sin(np.radians(np.asarray(fov_deg, dtype=np.float64)) / 2.0)


def _caption_for(source: Path | None, caption: str | None, name: str) -> str:
    if caption is not None:
        return str(caption)
    if source is not None:
        txt = source.with_suffix(".txt")
        if txt.is_file():
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
    return name.replace("_", " ")


def render_asset(
    path_or_mesh: Any,
    out_dir: str | os.PathLike,
    num_views: int = 32,
    size: int = 256,
    elevation_range: Sequence[float] = (0.0, 30.0),
    fov_range: Sequence[float] = (15.0, 60.0),
    distance_range: Sequence[float] = (0.9, 1.1),
    caption: str | None = None,
    seed: int = 0,
    *,
    normalize: bool = True,
    radius: float | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    renderer: Renderer | None = None,
) -> dict:
    """Render ``num_views`` views of one asset into ``out_dir`` (``rgba_000.png``..., ``meta.json``).

    Azimuths ``360 * i / num_views`` (starting at 0 = camera on +z), and per view a random elevation in
    ``elevation_range``, fov in ``fov_range`` and relative distance ``d`` in ``distance_range``:
    ``distance = d * r / sin(fov / 2)`` with ``r`` the object's bounding radius about the origin.

    Args:
        path_or_mesh: a mesh file (loaded with ``load_asset``) or a ``trimesh.Trimesh`` (used as given).
        caption: text for the asset; default the ``.txt`` beside the file, else its stem with ``_`` -> space.
        seed: seeds the elevation/fov/distance draws (``numpy.random.default_rng(seed)``).
        normalize: for a path, normalise the mesh into the unit cube (``load_asset``).
        radius: ``r`` of the distance rule; default the mesh's bounding radius. A fixed value keeps the
            sizes of objects comparable between assets (the synthetic world uses this).
        extra_meta: extra top-level entries for meta.json (e.g. ``attributes``).
        renderer: a ``Renderer`` of the right size to use; default one shared per process.

    Returns:
        The meta.json content. If ``out_dir/meta.json`` already exists the asset is not rendered again
        and the existing meta is returned (resume).

    Raises:
        ValueError: bad arguments, unreadable mesh, unwritable ``out_dir``.
    """
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            pass  # damaged: render again
    num_views = int(num_views)
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    el_lo, el_hi = _check_range("elevation_range", elevation_range)
    if el_lo < -90 or el_hi > 90:
        raise ValueError(f"elevation_range must lie in [-90, 90], got ({el_lo}, {el_hi})")
    fov_lo, fov_hi = _check_range("fov_range", fov_range, 0.0, 180.0)
    d_lo, d_hi = _check_range("distance_range", distance_range, 0.0)

    if isinstance(path_or_mesh, str | os.PathLike):
        source: Path | None = Path(path_or_mesh)
        mesh = load_asset(source, normalize=normalize)
        asset_name = str(source)
        stem = source.stem
    else:
        source = None
        mesh = path_or_mesh
        if not hasattr(mesh, "vertices") or not hasattr(mesh, "faces") or len(mesh.faces) == 0:
            raise ValueError("path_or_mesh must be a mesh file or a trimesh.Trimesh with triangles")
        asset_name = str(mesh.metadata.get("source") or mesh.metadata.get("name") or out.name)
        stem = Path(asset_name).stem if mesh.metadata.get("source") else out.name
    text = _caption_for(source, caption, stem)

    ensure_writable_dir(out)
    _clean_temp_files(out)

    import torch

    from ..cameras import c2w_to_model_camera, orbit_azimuths, orbit_c2w

    r = float(radius) if radius is not None else bounding_radius(mesh)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"radius must be a positive number, got {r}")
    rng = np.random.default_rng(seed)
    azimuths = orbit_azimuths(num_views, 0.0, 360.0)
    elevations = rng.uniform(el_lo, el_hi, num_views)
    fovs = rng.uniform(fov_lo, fov_hi, num_views)
    rel = rng.uniform(d_lo, d_hi, num_views)
    distances = view_distance(rel, r, fovs)
    c2w = orbit_c2w(
        torch.from_numpy(elevations), torch.from_numpy(azimuths), torch.from_numpy(np.asarray(distances))
    )  # float64
    model_cam = c2w_to_model_camera(c2w)
    c2w_np = c2w.numpy()

    rend = renderer if renderer is not None else _shared_renderer(size)
    if (rend.height, rend.width) != (size, size):
        raise ValueError(f"renderer size {rend.height}x{rend.width} does not match size={size}")
    views = []
    for i in range(num_views):
        name = f"rgba_{i:03d}.png"
        _atomic_save_png(out / name, rend.render(mesh, c2w_np[i], float(fovs[i])))
        views.append(
            {
                "file": name,
                "c2w": c2w_np[i].tolist(),
                "model_camera": model_cam[i].tolist(),
                "elevation": float(elevations[i]),
                "azimuth": float(azimuths[i]),
                "distance": float(distances[i]),
                "fov_deg": float(fovs[i]),
            }
        )
    meta: dict[str, Any] = {
        "asset": asset_name,
        "caption": text,
        "size": size,
        "seed": int(seed),
        "radius": r,
        "radius_from": "given" if radius is not None else "bounding sphere about the origin",
        "distance_rule": DISTANCE_RULE,
        "relative_distance": [float(x) for x in rel],
        "views": views,
    }
    if extra_meta:
        meta.update(dict(extra_meta))
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return meta


def _asset_seed(seed: int, stem: str) -> int:
    """Per-asset seed: independent of the order and number of assets (resumable, parallel-safe)."""
    return (int(seed) * 1_000_003 + zlib.crc32(stem.encode("utf-8"))) % (2**32)


def _render_task(task: tuple[str, str, dict]) -> tuple[str, str, str]:
    path, out_dir, kw = task
    try:
        if (Path(out_dir) / "meta.json").is_file():
            return path, "skipped", ""
        render_asset(path, out_dir, **kw)
        return path, "rendered", ""
    except Exception as e:
        return path, "failed", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def _worker_init(threads: int) -> None:
    # llvmpipe starts one rasteriser thread per core in every process: share the cores out instead
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def render_assets(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    out_root: str | os.PathLike,
    workers: int = 1,
    *,
    extra_meta: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    **kw: Any,
) -> dict:
    """Render many assets, one sub-folder ``out_root/<stem>/`` each (see ``render_asset`` for ``kw``).

    Folders are searched recursively. Each asset gets its own seed derived from ``seed`` and its stem.
    Assets whose meta.json exists are skipped (resume); an asset that fails is reported with an
    ``AssetWarning`` and skipped. With ``workers > 1`` assets are rendered by that many processes, each
    with its own GL context.

    Args:
        extra_meta: per-asset extra meta.json entries, keyed by the asset path as given (str) or stem.
        progress: show a tqdm progress bar.

    Returns:
        ``{"rendered": [dirs], "skipped": [dirs], "failed": {path: message}, "out": out_root}``.

    Raises:
        ValueError: no assets, unwritable ``out_root``, bad arguments, or every asset failed.
    """
    from tqdm.auto import tqdm

    assets = find_assets(paths)
    out = ensure_writable_dir(Path(out_root))
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if "caption" in kw and kw["caption"] is not None and len(assets) > 1:
        warnings.warn("one caption given for several assets: all get the same caption", stacklevel=2)
    seed = int(kw.pop("seed", 0))
    _check_render_settings(kw)  # once, before starting any work
    tasks = _render_tasks(assets, out, seed, kw, extra_meta)

    result: dict[str, Any] = {"rendered": [], "skipped": [], "failed": {}, "out": str(out)}
    bar = tqdm(total=len(tasks), desc="render", unit="asset", disable=not progress, file=sys.stderr)
    dirs = {t[0]: t[1] for t in tasks}

    def record(res: tuple[str, str, str]) -> None:
        path, status, msg = res
        if status == "failed":
            result["failed"][path] = msg
            warnings.warn(f"skipping asset {path}: {msg}", AssetWarning, stacklevel=4)  # the caller of render_assets
        else:
            result[status].append(dirs[path])
        bar.update(1)

    todo = []
    for t in tasks:
        if (Path(t[1]) / "meta.json").is_file():
            record((t[0], "skipped", ""))
        else:
            todo.append(t)
    try:
        _run_render_tasks(todo, workers, record)
    finally:
        bar.close()
    if result["failed"] and not result["rendered"] and not result["skipped"]:
        first = next(iter(result["failed"].items()))
        raise ValueError(f"no asset could be rendered ({len(result['failed'])} failed); {first[0]}: {first[1]}")
    return result


def _check_render_settings(kw: Mapping[str, Any]) -> None:
    """The ranges and counts of ``render_asset``'s keyword arguments (its defaults where absent)."""
    _check_range("elevation_range", kw.get("elevation_range", (0, 30)))
    _check_range("fov_range", kw.get("fov_range", (15, 60)), 0.0, 180.0)
    _check_range("distance_range", kw.get("distance_range", (0.9, 1.1)), 0.0)
    for name in ("num_views", "size"):
        if name in kw and int(kw[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {kw[name]}")


def _render_tasks(assets: list[Path], out: Path, seed: int, kw: Mapping[str, Any],
                  extra_meta: Mapping[str, Mapping[str, Any]] | None) -> list[tuple[str, str, dict]]:
    """(asset path, output folder, render_asset keyword arguments) per asset: folder ``out/<stem>`` (a stem
    seen before gets ``_2``, ``_3``... with a warning) and a per-asset seed."""
    tasks = []
    used: dict[str, int] = {}
    for p in assets:
        name = p.stem
        if name in used:  # same stem in two folders
            used[name] += 1
            name = f"{name}_{used[p.stem]}"
            warnings.warn(f"two assets are named {p.stem!r}: {p} goes to {name}/", AssetWarning, stacklevel=3)
        else:
            used[name] = 1
        task_kw = dict(kw, seed=_asset_seed(seed, name))
        if extra_meta:
            em = extra_meta.get(str(p), extra_meta.get(p.stem))
            if em:
                task_kw["extra_meta"] = dict(em)
        tasks.append((str(p), str(out / name), task_kw))
    return tasks


def _run_render_tasks(tasks: list[tuple[str, str, dict]], workers: int,
                      record: Callable[[tuple[str, str, str]], None]) -> None:
    """Render ``tasks`` in this process, or in ``workers`` spawned processes; ``record`` gets each outcome."""
    if not tasks:
        return
    if workers == 1 or len(tasks) == 1:
        for t in tasks:
            record(_render_task(t))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: a fresh interpreter per worker (no GL state or torch threads inherited by fork)
    n = min(workers, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // n)
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as ex:
        futures = [ex.submit(_render_task, t) for t in tasks]
        try:
            for fut in as_completed(futures):
                record(fut.result())
        except BrokenProcessPool as e:
            for fut in futures:
                fut.cancel()
            raise RuntimeError(
                "a render worker process died (out of memory, or a crash in the GL driver?); "
                "assets finished so far are kept, run again to resume, or use workers=1"
            ) from e
