"""Tests for mvdream3d.data: multi-view and image-text streaming datasets, collation, resume."""

from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mvdream3d.cameras import c2w_to_model_camera, get_camera, orbit_c2w
from mvdream3d.data import (
    DataWarning,
    ImageTextDataset,
    MultiViewDataset,
    collate_multiview,
    expand_shards,
    infinite_loader,
    load_image,
    select_views,
)

SRC = 64  # rendered size of the fixtures


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


def _rgba_view(view: int, size: int = SRC) -> Image.Image:
    """Transparent image with an opaque centre square whose red channel encodes the view index."""
    a = np.zeros((size, size, 4), dtype=np.uint8)
    a[..., :3] = (13, 200, 77)  # colour under alpha=0: must never show
    q = size // 4
    a[q:-q, q:-q] = (10 * view % 256, 128, 255 - view, 255)
    return Image.fromarray(a, "RGBA")


def make_asset(
    root: Path,
    name: str,
    num_views: int = 8,
    elevation: float = 15.0,
    az0: float = 0.0,
    caption: str | None = None,
    attributes: dict | None = None,
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    az = az0 + np.arange(num_views) * 360.0 / num_views
    c2w = orbit_c2w(torch.full((num_views,), elevation, dtype=torch.float64), torch.from_numpy(az), 2.5)
    model = c2w_to_model_camera(c2w)
    views = []
    for i in range(num_views):
        file = f"rgba_{i:03d}.png"
        _rgba_view(i).save(folder / file)
        views.append({"file": file, "c2w": c2w[i].tolist(), "model_camera": model[i].tolist(),
                      "elevation": elevation, "azimuth": float(az[i]), "distance": 2.5, "fov_deg": 40.0})
    meta = {"asset": name, "caption": caption if caption is not None else f"a {name}", "size": SRC, "views": views}
    if attributes is not None:
        meta["attributes"] = attributes
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def mv_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mv")
    for i in range(8):
        make_asset(root, f"obj{i:02d}", num_views=8, elevation=5.0 + 3 * i, az0=7.0 * i,
                   attributes={"index": i} if i % 2 else None)
    return root


def _ids(items) -> list[str]:
    return [it["asset_id"] for it in items]


def _azimuths(cameras: torch.Tensor) -> np.ndarray:
    """Azimuth (degrees) of model cameras: Blender world, position = (sin az, -cos az, .) * cos el."""
    t = cameras.double().reshape(-1, 4, 4)[:, :3, 3]
    return np.degrees(np.arctan2(t[:, 0].numpy(), -t[:, 1].numpy())) % 360


def _image_bytes(colour, fmt: str = "PNG", size=(40, 24), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _write_images(folder: Path, n: int, fmt: str = "png") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i:02d}.{fmt}"
        pil_fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
        (folder / name).write_bytes(_image_bytes((20 * i, 100, 50), pil_fmt))
        names.append(name)
    return names


def _write_tar(path: Path, samples: list[tuple[str, str, bytes, str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, img_ext, img, cap_ext, cap in samples:
            for ext, data in ((img_ext, img), (cap_ext, cap)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    paths = []
    for s in range(3):
        samples = []
        for i in range(5):
            key = f"{s:02d}{i:03d}"
            if i % 2:
                samples.append((key, "jpg", _image_bytes((i, 50, 90), "JPEG"), "json",
                                json.dumps({"caption": f"cap {key}", "url": "x"}).encode()))
            else:
                samples.append((key, "png", _image_bytes((i, 50, 90, 128), "PNG", mode="RGBA"), "txt",
                                f"cap {key}".encode()))
        path = root / f"shard-{s:03d}.tar"
        _write_tar(path, samples)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# multi-view dataset
# ----------------------------------------------------------------------------------------------


def test_multiview_item_shapes_ranges_and_cameras(mv_root):
    ds = MultiViewDataset(mv_root, num_views=4, image_size=32)
    item = next(iter(ds))
    assert set(item) == {"images", "cameras", "caption", "asset_id", "attributes"}
    assert item["images"].shape == (4, 3, 32, 32) and item["images"].dtype == torch.float32
    assert item["images"].min() >= -1 and item["images"].max() <= 1
    assert item["cameras"].shape == (4, 16) and item["cameras"].dtype == torch.float32
    assert item["caption"] == f"a {item['asset_id']}"
    assert isinstance(item["attributes"], dict)

    # cameras are c2w_to_model_camera of the chosen views, i.e. get_camera of the orbit.
    i = int(item["asset_id"][3:])
    elevation, az0 = 5.0 + 3 * i, 7.0 * i
    out = ds.get(i, start=2)
    ref = get_camera(4, elevation=elevation, azimuth_start=az0 + 2 * 45.0)
    torch.testing.assert_close(out["cameras"], ref, atol=1e-5, rtol=0)
    assert ds.get("obj01")["attributes"] == {"index": 1}
    assert ds.get("obj00")["attributes"] == {}


def test_multiview_views_equally_spaced_with_random_offset(mv_root):
    ds = MultiViewDataset(mv_root, num_views=4, image_size=16, epochs=3)
    offsets = set()
    for item in ds:
        az = _azimuths(item["cameras"])
        steps = (np.diff(az) % 360)
        np.testing.assert_allclose(steps, 90.0, atol=1e-3)
        i = int(item["asset_id"][3:])
        start_view = round(((az[0] - 7.0 * i) % 360) / 45.0) % 8
        offsets.add(start_view)
        # elevation from the render
        t = item["cameras"].double().reshape(-1, 4, 4)[:, :3, 3]
        np.testing.assert_allclose(np.degrees(np.arcsin(t[:, 2].numpy())), 5.0 + 3 * i, atol=1e-4)
        # the image shows the chosen view (red channel encodes the view index)
        red = (item["images"][0, 0, 16 // 2, 16 // 2].item() + 1) / 2 * 255
        assert abs(red - 10 * start_view) < 2
    assert len(offsets) >= 4  # 24 items, 8 possible start views


def test_select_views_stride_and_nearest():
    az = np.arange(32) * 360.0 / 32
    c2w = orbit_c2w(torch.full((32,), 20.0, dtype=torch.float64), torch.from_numpy(az)).numpy()
    assert select_views(c2w, 5, 4) == [5, 13, 21, 29]
    assert select_views(c2w, 30, 4) == [30, 6, 14, 22]
    # V % F != 0: nearest azimuths, distinct views
    sel = select_views(c2w[:30], 0, 4)
    assert sel[0] == 0 and len(set(sel)) == 4
    got = np.degrees(np.arctan2(c2w[sel, 0, 3], c2w[sel, 2, 3])) % 360
    assert np.all(np.abs((got - np.array([0, 90, 180, 270]) + 180) % 360 - 180) <= 6.0)


def test_fixed_start_and_get_are_deterministic(mv_root):
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8, fixed_start=3, epochs=1)
    for item in ds:
        i = int(item["asset_id"][3:])
        az = _azimuths(item["cameras"])
        np.testing.assert_allclose((az - 7.0 * i) % 360, [135.0, 315.0], atol=1e-3)
    a, b = ds.get(1, start=1), ds.get(1, start=1)
    torch.testing.assert_close(a["images"], b["images"])
    with pytest.raises(IndexError):
        ds.get(1, start=8)


@pytest.mark.parametrize("background", ["white", (0.2, 0.4, 0.6), "random"])
def test_background_compositing(mv_root, background):
    ds = MultiViewDataset(mv_root, num_views=4, image_size=32, background=background)
    colours = []
    for i in range(4):
        item = ds.get(i)
        corner = item["images"][:, :, 0, 0]  # (F, 3): fully transparent in every view
        assert torch.allclose(corner, corner[0].expand_as(corner), atol=1e-6)  # one colour per object
        if background == "white":
            torch.testing.assert_close(corner[0], torch.ones(3), atol=1e-6, rtol=0)
        elif background != "random":
            torch.testing.assert_close(corner[0], torch.tensor(background) * 2 - 1, atol=1e-6, rtol=0)
        colours.append(corner[0])
        # opaque centre keeps its colour (green 128)
        assert abs((item["images"][0, 1, 16, 16].item() + 1) / 2 * 255 - 128) < 1.5
    if background == "random":
        assert len({tuple(c.tolist()) for c in colours}) == 4


def test_load_image_transparent_pixels_become_background():
    img = Image.new("RGBA", (50, 30), (255, 0, 0, 0))  # non-square, transparent red
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = load_image(buf.getvalue(), 16, (0.25, 0.5, 1.0))
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, np.broadcast_to(np.array([-0.5, 0.0, 1.0])[:, None, None], out.shape), atol=1e-6)


def test_two_workers_no_duplicates_and_all_items(mv_root):
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    ids = _ids(loader)
    assert sorted(ids) == sorted(ds.asset_ids)


def test_two_ranks_partition_items(mv_root):
    per_rank = [_ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1, rank=r, world_size=2))
                for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(MultiViewDataset(mv_root, num_views=2).asset_ids)
    # 3 ranks over 8 assets: drop_remainder keeps ranks equal, otherwise all items are covered
    lens = [len(_ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1, rank=r, world_size=3)))
            for r in range(3)]
    assert lens == [2, 2, 2]
    kept = [_ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1, rank=r, world_size=3,
                                  drop_remainder=False)) for r in range(3)]
    assert sorted(sum(kept, [])) == sorted(MultiViewDataset(mv_root, num_views=2).asset_ids)


def test_epochs_are_reshuffled(mv_root):
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=2)
    ids = _ids(ds)
    assert sorted(ids[:8]) == sorted(ids[8:]) and ids[:8] != ids[8:]
    assert _ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=2)) == ids  # same seed
    assert _ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=2, seed=1)) != ids
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1)
    ds.set_epoch(1)
    assert _ids(ds) == ids[8:]


def test_corrupt_image_skipped_with_warning(tmp_path):
    for i in range(3):
        make_asset(tmp_path, f"a{i}", num_views=4)
    (tmp_path / "a1" / "rgba_002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = MultiViewDataset(tmp_path, num_views=4, image_size=8, epochs=2)
    with pytest.warns(DataWarning, match="a1"):
        ids = _ids(ds)
    assert sorted(ids) == ["a0", "a0", "a2", "a2"]


def test_too_few_views_and_bad_meta_skipped(tmp_path):
    make_asset(tmp_path, "good", num_views=8)
    make_asset(tmp_path, "few", num_views=2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{not json")
    (tmp_path / "no_meta").mkdir()
    with pytest.warns(DataWarning, match="skipped 3 asset"):
        ds = MultiViewDataset(tmp_path, num_views=4)
    assert ds.asset_ids == ["good"]
    # without validation the bad ones are skipped while streaming
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        lazy = MultiViewDataset(tmp_path, num_views=4, image_size=8, epochs=1, validate=False)
        assert sorted(lazy.asset_ids) == ["broken", "few", "good"]
        assert _ids(lazy) == ["good"]


def test_missing_or_empty_root_errors(tmp_path):
    with pytest.raises(ValueError, match="does_not_exist.*meta.json"):
        MultiViewDataset(tmp_path / "does_not_exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no usable asset.*meta.json"):
        MultiViewDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="background"):
        MultiViewDataset(tmp_path, background="pink")


def test_multiview_state_dict_resumes(mv_root):
    def stream(ds, n):
        it = iter(ds)
        return [next(it) for _ in range(n)]

    full = stream(MultiViewDataset(mv_root, num_views=2, image_size=8), 19)
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8)
    first = stream(ds, 11)
    state = ds.state_dict()
    assert state["epoch"] == 1 and state["items_yielded"] == 3
    resumed = MultiViewDataset(mv_root, num_views=2, image_size=8)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = stream(resumed, 8)
    assert _ids(first + rest) == _ids(full)
    for a, b in zip(first + rest, full, strict=True):
        torch.testing.assert_close(a["cameras"], b["cameras"])  # same start views too


def test_infinite_loader_with_workers_resumes_exactly(mv_root):
    def batches(ds, n, workers):
        gen = infinite_loader(ds, batch_size=3, num_workers=workers)
        out = [next(gen)["asset_ids"] for _ in range(n)]
        gen.close()
        return out

    ref = batches(MultiViewDataset(mv_root, num_views=2, image_size=8), 6, 0)
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8)
    got = batches(ds, 2, 2)
    assert got == ref[:2]  # 2 workers give the in-process order
    state = ds.state_dict()
    assert (state["epoch"], state["items_yielded"]) == (0, 6)
    resumed = MultiViewDataset(mv_root, num_views=2, image_size=8)
    resumed.load_state_dict(state)
    assert batches(resumed, 4, 2) == ref[2:]


# ----------------------------------------------------------------------------------------------
# collation
# ----------------------------------------------------------------------------------------------


def test_collate_multiview_and_2d(mv_root, tmp_path):
    ds = MultiViewDataset(mv_root, num_views=4, image_size=8)
    items = [ds.get(0), ds.get(3)]
    batch = collate_multiview(items)
    assert batch["images"].shape == (8, 3, 8, 8) and batch["cameras"].shape == (8, 16)
    assert batch["num_frames"] == 4 and batch["captions"] == ["a obj00", "a obj03"]
    torch.testing.assert_close(batch["images"][4:], items[1]["images"])
    torch.testing.assert_close(batch["cameras"][:4], items[0]["cameras"])
    assert batch["asset_ids"] == ["obj00", "obj03"]

    names = _write_images(tmp_path, 3)
    for n in names:
        (tmp_path / n).with_suffix(".txt").write_text(f"caption {n}")
    ds2 = ImageTextDataset(tmp_path, image_size=8)
    batch2 = collate_multiview([ds2.get(0), ds2.get(1), ds2.get(2)])
    assert batch2["images"].shape == (3, 3, 8, 8) and batch2["cameras"] is None
    assert batch2["num_frames"] == 1 and len(batch2["captions"]) == 3
    with pytest.raises(ValueError, match="mix"):
        collate_multiview([items[0], {**items[1], "cameras": None}])


def test_feature_masks_load_resize_and_collate(tmp_path):
    with_masks = make_asset(tmp_path, "featured", num_views=4)
    make_asset(tmp_path, "plain", num_views=4)  # no feature: no mask files, zero weights
    for v in range(4):
        m = np.zeros((SRC, SRC), np.uint8)
        m[: SRC // 2, : SRC // 2] = 255 if v == 0 else 0  # the front view sees the feature in its top-left quarter
        Image.fromarray(m, "L").save(with_masks / f"feature_{v:03d}.png")
    ds = MultiViewDataset(tmp_path, num_views=4, image_size=8, fixed_start=0, feature_masks=True)
    featured, plain = ds.get("featured"), ds.get("plain")
    w = featured["feature_weights"]
    assert w.shape == (4, 8, 8) and w.dtype == torch.float32
    torch.testing.assert_close(w[0, :4, :4], torch.ones(4, 4))
    assert float(w[0].sum()) == 16.0 and float(w[1:].sum()) == 0.0
    assert float(plain["feature_weights"].abs().sum()) == 0.0
    batch = collate_multiview([featured, plain])
    assert batch["feature_weights"].shape == (8, 8, 8)
    assert "feature_weights" not in MultiViewDataset(tmp_path, num_views=4, image_size=8).get("featured")
    empty = tmp_path / "nomasks"
    make_asset(empty, "a", num_views=4)
    with pytest.raises(ValueError, match="mvdream3d synth"):
        MultiViewDataset(empty, num_views=4, image_size=8, feature_masks=True)


# ----------------------------------------------------------------------------------------------
# image-text dataset
# ----------------------------------------------------------------------------------------------


def _check_2d(item, size=16):
    assert item["images"].shape == (1, 3, size, size) and item["images"].dtype == torch.float32
    assert item["images"].min() >= -1 and item["images"].max() <= 1
    assert isinstance(item["caption"], str) and item["caption"]


def test_image_text_sidecar_folder(tmp_path):
    sub = _write_images(tmp_path / "a" / "sub", 2, "jpg")
    names = _write_images(tmp_path / "a", 4, "png") + [f"sub/{n}" for n in sub]
    for n in names[:-1]:
        (tmp_path / "a" / n).with_suffix(".txt").write_text(f"  caption {n}\n")
    with pytest.warns(DataWarning, match="1 image"):
        ds = ImageTextDataset(tmp_path / "a", image_size=16, epochs=1)
    items = list(ds)
    assert sorted(it["caption"] for it in items) == sorted(f"caption {n}" for n in names[:-1])
    for it in items:
        _check_2d(it)
    # the image content survives (colour of img01: (20, 100, 50)), centre-cropped non-square source
    img = ds.get(ds.files.index("img01.png"))["images"][0]
    torch.testing.assert_close(img[:, 8, 8], torch.tensor([20, 100, 50]) / 255 * 2 - 1, atol=1e-5, rtol=0)


def test_image_text_jsonl_and_csv(tmp_path):
    names = _write_images(tmp_path / "j", 3, "webp")
    with open(tmp_path / "j" / "captions.jsonl", "w") as f:
        for n in names + ["missing.png"]:
            f.write(json.dumps({"file": n, "caption": f"jsonl {n}"}) + "\n")
    with pytest.warns(DataWarning, match="do not exist"):
        ds = ImageTextDataset(tmp_path / "j", image_size=16, epochs=1)
    assert sorted(it["caption"] for it in ds) == sorted(f"jsonl {n}" for n in names)

    names = _write_images(tmp_path / "c", 3, "jpg")
    with open(tmp_path / "c" / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        for n in names:
            w.writerow([n, f"csv, {n}"])
    items = list(ImageTextDataset(tmp_path / "c", image_size=16, epochs=1))
    assert sorted(it["caption"] for it in items) == sorted(f"csv, {n}" for n in names)
    for it in items:
        _check_2d(it)


def test_image_text_empty_and_uncaptioned_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no images"):
        ImageTextDataset(tmp_path / "empty")
    _write_images(tmp_path / "nocap", 2)
    with pytest.raises(ValueError, match="nocap.*no captioned images"):
        ImageTextDataset(tmp_path / "nocap")
    with pytest.raises(ValueError, match="does not exist"):
        ImageTextDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no tar shard matches"):
        ImageTextDataset(str(tmp_path / "*.tar"))
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="bad.tar"):
        ImageTextDataset(tmp_path / "bad.tar")


def test_image_text_corrupt_image_skipped(tmp_path):
    names = _write_images(tmp_path, 4)
    for n in names:
        (tmp_path / n).with_suffix(".txt").write_text(f"caption {n}")
    (tmp_path / names[2]).write_bytes(b"garbage")
    with pytest.warns(DataWarning, match=names[2]):
        items = list(ImageTextDataset(tmp_path, image_size=8, epochs=1))
    assert sorted(it["id"] for it in items) == sorted(n for i, n in enumerate(names) if i != 2)


def test_tar_shards_load(shards):
    all_keys = {f"{s:02d}{i:03d}" for s in range(3) for i in range(5)}
    for source in (shards, str(shards[0].parent / "shard-*.tar"), str(shards[0].parent / "shard-{000..002}.tar"),
                   shards[0].parent):
        assert len(expand_shards(source)) == 3
        ds = ImageTextDataset(source, image_size=16, epochs=1, shuffle_buffer=4)
        items = list(ds)
        assert sorted(it["caption"] for it in items) == sorted(f"cap {k}" for k in all_keys)
        for it in items:
            _check_2d(it)
    spawned = pickle.loads(pickle.dumps(ds))  # what a 'spawn' DataLoader worker gets
    assert sorted(it["id"] for it in spawned) == sorted(it["id"] for it in items)
    # RGBA png with alpha 128 over white
    ds = ImageTextDataset(shards[:1], image_size=8, epochs=1, shuffle_buffer=0)
    first = next(iter(ds))
    assert first["id"] == "shard-000.tar/00000"
    expected = (np.array([0, 50, 90]) * (128 / 255) / 255 + (1 - 128 / 255)) * 2 - 1
    np.testing.assert_allclose(first["images"][0, :, 4, 4].numpy(), expected, atol=2 / 255)


def test_tar_shuffle_workers_and_ranks(shards):
    def keys(ds):
        return [it["id"] for it in ds]

    a = keys(ImageTextDataset(shards, image_size=8, epochs=2, shuffle_buffer=4))
    assert len(a) == 30 and sorted(a[:15]) == sorted(a[15:]) and a[:15] != a[15:]
    # workers: 3 shards over 2 workers; ranks: 2 ranks x 2 workers > 3 shards (sample-level split)
    loader = DataLoader(ImageTextDataset(shards, image_size=8, epochs=1), batch_size=None, num_workers=2)
    got = keys(loader)
    assert len(got) == 15 and len(set(got)) == 15
    per_rank = []
    for r in range(2):
        ds = ImageTextDataset(shards, image_size=8, epochs=1, rank=r, world_size=2)
        per_rank.append(keys(DataLoader(ds, batch_size=None, num_workers=2)))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(got)


def test_tar_corrupt_member_skipped(tmp_path):
    samples = [(f"k{i}", "png", _image_bytes((i, 0, 0)), "txt", f"c{i}".encode()) for i in range(4)]
    samples[1] = ("k1", "png", b"garbage bytes", "txt", b"c1")
    _write_tar(tmp_path / "s.tar", samples)
    with pytest.warns(DataWarning, match="k1"):
        items = list(ImageTextDataset(tmp_path / "s.tar", image_size=8, epochs=1))
    assert sorted(it["caption"] for it in items) == ["c0", "c2", "c3"]


def test_gzipped_tar_shard(tmp_path, shards):
    import gzip

    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(shards[0].read_bytes()))
    items = list(ImageTextDataset(gz, image_size=8, epochs=1))
    assert sorted(it["caption"] for it in items) == sorted(f"cap 00{i:03d}" for i in range(5))


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_image_text_state_dict_resumes(tmp_path, shards, kind):
    if kind == "folder":
        names = _write_images(tmp_path, 7)
        for n in names:
            (tmp_path / n).with_suffix(".txt").write_text(f"caption {n}")
        source = tmp_path
    else:
        source = shards

    def make():
        return ImageTextDataset(source, image_size=8, shuffle_buffer=4)

    def take(ds, n):
        it = iter(ds)
        return [next(it)["id"] for _ in range(n)]

    full = take(make(), 40)
    ds = make()
    first = take(ds, 23)
    state = ds.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert first + take(resumed, 17) == full


def test_tar_resume_with_workers(shards):
    def batches(ds, n, workers):
        gen = infinite_loader(ds, batch_size=2, num_workers=workers)
        out = [next(gen)["ids"] for _ in range(n)]
        gen.close()
        return out

    def make():
        return ImageTextDataset(shards, image_size=8, shuffle_buffer=3)

    ref = batches(make(), 8, 2)
    ds = make()
    assert batches(ds, 3, 2) == ref[:3]
    state = ds.state_dict()
    assert state["items_yielded"] == 6 and state["num_workers"] == 2
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # a checkpoint taken before the next batch keeps the layout
    assert batches(resumed, 5, 2) == ref[3:]


def test_infinite_loader_2d_batches(tmp_path):
    names = _write_images(tmp_path, 3)
    for n in names:
        (tmp_path / n).with_suffix(".txt").write_text(n)
    gen = infinite_loader(ImageTextDataset(tmp_path, image_size=8, epochs=1), batch_size=2)
    got = [next(gen) for _ in range(5)]  # finite dataset: restarted; drop_last keeps batches full
    assert all(b["images"].shape == (2, 3, 8, 8) and b["cameras"] is None for b in got)


def test_rank_from_torch_distributed(mv_root, monkeypatch):
    explicit = _ids(MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1, rank=1, world_size=2))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    ds = MultiViewDataset(mv_root, num_views=2, image_size=8, epochs=1)
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert _ids(ds) == explicit
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    assert _ids(copy) == explicit  # the rank travelled with the pickle
    assert ds.state_dict()["world_size"] == 1  # live query again in this process


def test_multiview_dataset_over_several_roots(tmp_path):
    from test_training import make_multiview_folder

    from mvdream3d.data import MultiViewDataset

    a = make_multiview_folder(tmp_path / "a", n_assets=2)
    b = make_multiview_folder(tmp_path / "b", n_assets=3)
    ds = MultiViewDataset([a, b], num_views=4, image_size=16)
    assert ds.num_items == 5 and "a/asset0" in ds.asset_ids and "b/asset2" in ds.asset_ids
    assert ds.get("b/asset1")["images"].shape == (4, 3, 16, 16)
