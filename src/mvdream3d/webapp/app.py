"""The gradio page: Multi-view, Text-to-3D, DreamBooth and Gallery tabs around :class:`.handlers.Handlers`.

Heavy jobs (the three tabs' main buttons and Resume) share one slot of gradio's queue
(``concurrency_id="heavy"``, limit 1) so they run one at a time, in order; waiting users see their place in
the queue. A text-to-3D run goes on when its page is closed (the Text-to-3D tab's Runs list reopens it,
following it live). Text-to-3D and DreamBooth show their progress in their status line (gradio's own
overlay is kept small: it covered the status at each update). Every endpoint is also callable with
gradio_client under its ``api_name`` (see docs/webapp.md).

The fields start at the default model's settings and follow the model pickers; number fields are plain
numbers (a slider clamps what is typed, silently), their ranges shown under them.

Inputs are checked by the app, not by gradio: the endpoints run with ``preprocess=False`` (gradio's own
checks of a Number or Slider fail on a wrong type with a generic error and a server traceback), and the
handlers check every value's type and range (:mod:`.jobs`). Uploads keep gradio's file handling (moved to
its upload folder, paths checked); a payload that is not a list of files gets a readable error
(:func:`_readable_upload_errors`).
"""

import os
from pathlib import Path
from typing import Any

import gradio as gr
import pydantic

from ..diffusion.sampling import SAMPLERS
from ..files import ensure_writable_dir
from .handlers import UPLOADS, Handlers, page_errors, random_seed
from .jobs import (
    MAX_3D_GUIDANCE,
    MAX_3D_STEPS,
    MAX_AZIMUTH,
    MAX_DREAMBOOTH_STEPS,
    MAX_ELEVATION,
    MAX_GUIDANCE,
    MAX_LAMBDA,
    MAX_RESOLUTION,
    MAX_SEED,
    MAX_STEPS,
    MAX_VIEWS,
    MIN_AZIMUTH,
    MIN_ELEVATION,
    MIN_RESOLUTION,
    shown,
)
from .models import ModelRegistry

# Captions of the built-in model's procedural world (mvdream3d.data.synth: its colours, shapes and front
# features, without the held-out ones), the prompts it knows
EXAMPLE_PROMPTS = ("a red cube with a yellow nose", "a blue sphere with a white face",
                   "a green cylinder with an orange horn", "a yellow pyramid with a black face", "a purple cone",
                   "a white sphere and a red cube")
CSS = """
.gradio-container {max-width: 1280px !important}
.seed-row {align-items: end}
.seed-row button {max-height: 48px}
#mv-gallery .thumbnail-item, #runs-gallery .thumbnail-item, #runs-images .thumbnail-item {background: white}
#mv-gallery img, #mv-grid img, #runs-gallery img, #runs-images img {image-rendering: pixelated}
#t3d-live img, #t3d-preview img, #db-grid img, #mv-grid img {width: 100%; height: auto; object-fit: contain;
  image-rendering: pixelated}
#t3d-live .image-frame, #t3d-preview .image-frame, #db-grid .image-frame, #mv-grid .image-frame {width: 100%}
#t3d-status, #db-status {min-height: 210px}
#t3d-video video, #runs-video video {image-rendering: pixelated}
"""
# a status line of ours shows the progress (stage, steps, rate, time left): gradio's own overlay would cover it
# at each update (the flicker), so these events show only gradio's small queue / timer note
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy", "preprocess": False}
STREAMED = {"show_progress": "minimal"}
# following a run (reopened from the Runs list) is no heavy job: any number at once
FOLLOW = {"concurrency_limit": None, "concurrency_id": "follow", "preprocess": False, "show_progress": "minimal"}
RAW = {"preprocess": False}  # the handler checks the values (see the module docstring)
# light events bypass the queue: a full queue must not refuse Cancel, the gallery or a page's first load
LIGHT = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}  # quick: no overlay on the page
OUTSIDE_QUEUE = {"queue": False}


def _model_picker(registry: ModelRegistry, elem_id: str) -> gr.Dropdown:
    # custom values pass gradio's own check so that models added later (DreamBooth) work for every session and
    # API client; the registry accepts only what it offers
    return gr.Dropdown(registry.choices(), value=registry.default, label="Model", elem_id=elem_id,
                       allow_custom_value=True,
                       info="built-in, files given with --model / --models-dir, and this server's DreamBooth results")


def _readable_upload_errors(files: gr.File, name: str) -> gr.File:
    """Make gradio's validation of an upload payload (done before any handler runs, even with
    ``preprocess=False``) answer a payload that is not a list of files with ``name`` and what to send,
    instead of a generic error and a traceback in the server log. The API schema stays the same."""
    base = files.data_model

    def model_validate(cls: type, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super(checked, cls).model_validate(obj, *args, **kwargs)
        except pydantic.ValidationError:
            raise gr.Error(f"{name} must be {UPLOADS}, got {shown(obj)}", title="Cannot do that",
                           print_exception=False) from None

    checked = type(base.__name__, (base,), {"model_validate": classmethod(model_validate),
                                            "__module__": base.__module__})
    files.data_model = checked
    return files


def _range(lo: float, hi: float, whole: bool = True) -> str:
    """The valid range of a field, for its info line (the handlers refuse values outside it, naming it)."""
    if whole:
        return f"a whole number, {int(lo)} to {int(hi)}"
    return f"a number, {lo:g} to {hi:g}"


def _seed_row(elem_id: str) -> gr.Number:
    with gr.Row(elem_classes="seed-row"):
        seed = gr.Number(0, label="Seed", elem_id=elem_id, scale=3, info=_range(0, MAX_SEED))
        button = gr.Button("Random seed", size="md", scale=1, elem_id=f"{elem_id}-random")
    button.click(random_seed, None, seed, **LIGHT)
    return seed


def build_app(model: str | list[str] | None = None, out_dir: str | os.PathLike = "mvdream3d-web",
              models_dir: str | os.PathLike | None = None, config: str | None = None,
              overrides: list[str] | tuple[str, ...] = (), dreambooth_settings: dict | None = None,
              device: str = "auto", max_queue: int = 8) -> gr.Blocks:
    """The web app as a ``gr.Blocks`` (queue configured; serve it with :func:`launch_app`).

    Args:
        model: the model(s) offered first in the pickers (names or checkpoint paths; the first is the default).
        out_dir: where runs are written and the only folder the app serves files from (gradio's upload and
            cache folder is ``out_dir/.gradio``).
        models_dir: a folder of .safetensors / .pt checkpoints also offered in the pickers.
        config / overrides: text-to-3D config name or YAML and ``section.key=value`` overrides (as the CLI's).
        dreambooth_settings: DreamBoothConfig fields for every DreamBooth run (e.g. ``{"train": "lora"}``).
        device: where the models run (``auto``: the GPU if there is one).
        max_queue: how many requests may wait in the queue.

    The fields start at the default model's own settings (its config's ``sampling``, the text-to-3D recipe
    for it, DreamBooth's defaults with ``dreambooth_settings``) and follow the model picker. Number fields
    keep what is typed: a value out of range is refused with a message naming the range, never changed.
    """
    from ..threed.config import load_text_to_3d_config

    load_text_to_3d_config(config or "builtin", list(overrides))  # a bad --config / --set fails at start
    out = ensure_writable_dir(out_dir).resolve()
    os.environ["GRADIO_TEMP_DIR"] = str(ensure_writable_dir(out / ".gradio"))  # uploads and served copies
    models = [model] if isinstance(model, str) else list(model or [])
    registry = ModelRegistry(out, models, models_dir, device)
    h = Handlers(registry, out, config, tuple(overrides), dreambooth_settings)
    mvd, t3d, dbd = h.multiview_defaults(), h.text_to_3d_defaults(), h.dreambooth_defaults()

    with gr.Blocks(title="mvdream3d", analytics_enabled=False, delete_cache=(3600, 7 * 86400)) as demo:
        gr.Markdown("## mvdream3d: text → consistent views → 3D")
        with gr.Tabs():
            with gr.Tab("Multi-view", id="multiview"):
                with gr.Row():
                    with gr.Column(scale=2):
                        mv_prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLE_PROMPTS[0], elem_id="mv-prompt")
                        gr.Examples([[p] for p in EXAMPLE_PROMPTS], [mv_prompt], label="Examples (what the built-in "
                                    "model knows: coloured shapes, a nose, horn or face)", elem_id="mv-examples")
                        mv_negative = gr.Textbox(label="Negative prompt", elem_id="mv-negative")
                        with gr.Row():
                            mv_views = gr.Number(4, label="Views", elem_id="mv-views", info=_range(1, MAX_VIEWS))
                            mv_elev = gr.Number(15, label="Elevation (°)", elem_id="mv-elevation",
                                                info=_range(MIN_ELEVATION, MAX_ELEVATION, whole=False))
                            mv_az = gr.Number(0, label="Azimuth start (°)", elem_id="mv-azimuth",
                                              info=_range(MIN_AZIMUTH, MAX_AZIMUTH, whole=False))
                        with gr.Row():
                            mv_sampler = gr.Dropdown(list(SAMPLERS), value=mvd["sampler"], label="Sampler",
                                                     elem_id="mv-sampler")
                            mv_steps = gr.Number(mvd["steps"], label="Steps", elem_id="mv-steps",
                                                 info=_range(1, MAX_STEPS))
                            mv_guid = gr.Number(mvd["guidance_scale"], label="Guidance scale", elem_id="mv-guidance",
                                                info=_range(0, MAX_GUIDANCE, whole=False))
                        mv_seed = _seed_row("mv-seed")
                        mv_model = _model_picker(registry, "mv-model")
                        mv_go = gr.Button("Generate views", variant="primary", elem_id="mv-generate")
                    with gr.Column(scale=3):
                        mv_status = gr.Markdown(elem_id="mv-status", min_height=60)
                        mv_gallery = gr.Gallery(label="Views (enlarged; the downloads are the native files)",
                                                columns=4, height=300, fit_columns=False, object_fit="contain",
                                                format="png", elem_id="mv-gallery")
                        mv_grid = gr.Image(label="Grid", format="png", elem_id="mv-grid")
                        with gr.Accordion("Cameras used (as in cameras.json)", open=False):
                            mv_cams = gr.JSON(label="OpenGL camera-to-world, world +y up", elem_id="mv-cameras")
                        mv_files = gr.File(label="Downloads: grid, views, cameras.json", file_count="multiple",
                                           elem_id="mv-files")
            with gr.Tab("Text-to-3D", id="text-to-3d") as t3d_tab:
                with gr.Row():
                    with gr.Column(scale=2):
                        t_prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLE_PROMPTS[2], elem_id="t3d-prompt")
                        gr.Examples([[p] for p in EXAMPLE_PROMPTS[:4]], [t_prompt], label="Examples",
                                    elem_id="t3d-examples")
                        t_steps = gr.Number(t3d["steps"], label="Optimisation steps", elem_id="t3d-steps",
                                            info=_range(1, MAX_3D_STEPS) + " (0: the recipe's)")
                        t_res = gr.Number(t3d["resolution"], label="Render resolution (px)", elem_id="t3d-resolution",
                                          info=f"{MIN_RESOLUTION} to {MAX_RESOLUTION}; the recipe's: "
                                               f"{t3d['resolutions']} (0 keeps it)")
                        t_guid = gr.Number(t3d["guidance_scale"], label="Guidance scale", elem_id="t3d-guidance",
                                           info=_range(0, MAX_3D_GUIDANCE, whole=False) + " (0: the recipe's)")
                        t_seed = _seed_row("t3d-seed")
                        t_model = _model_picker(registry, "t3d-model")
                        with gr.Row():
                            t_go = gr.Button("Make 3D", variant="primary", elem_id="t3d-run")
                            t_cancel = gr.Button("Cancel (keeps the run)", variant="stop", elem_id="t3d-cancel")
                        with gr.Group():
                            t_runs = gr.Dropdown([], label="Runs", elem_id="t3d-runs", allow_custom_value=True,
                                                 info="this server's text-to-3D runs: they go on when the page is "
                                                      "closed; pick one to reopen it")
                            with gr.Row():
                                t_runs_refresh = gr.Button("Refresh", size="sm", elem_id="t3d-runs-refresh")
                                t_resume = gr.Button("Resume", size="sm", elem_id="t3d-resume")
                    with gr.Column(scale=3):
                        t_status = gr.Markdown(elem_id="t3d-status")
                        t_preview = gr.Image(label="Multi-view preview (the model's own 4 views; while it samples, "
                                             "its current estimate)", format="png", elem_id="t3d-preview")
                        t_live = gr.Image(label="The 3D object now (4 views)", format="png", elem_id="t3d-live")
                        with gr.Row():
                            t_mesh = gr.Model3D(label="Mesh (.glb)", clear_color=(1, 1, 1, 1), elem_id="t3d-model3d")
                            t_video = gr.Video(label="Turntable", autoplay=True, loop=True, elem_id="t3d-video")
                        t_glb, t_mp4 = gr.File(visible=False), gr.File(visible=False)  # for the API and .then
                        t_files = gr.File(label="Downloads: .glb, .obj, video, ...", file_count="multiple",
                                          elem_id="t3d-files")
            with gr.Tab("DreamBooth", id="dreambooth"):
                with gr.Row():
                    with gr.Column(scale=2):
                        d_photos = _readable_upload_errors(
                            gr.File(label="3-10 photos of the subject", file_count="multiple",
                                    file_types=["image"], elem_id="db-photos"), "the photos")
                        with gr.Row():
                            d_token = gr.Textbox(dbd["token"], label="Token", elem_id="db-token")
                            d_class = gr.Textbox(label="Class word", placeholder="toy", elem_id="db-class")
                        d_steps = gr.Number(dbd["steps"], label="Steps", elem_id="db-steps",
                                            info=_range(1, MAX_DREAMBOOTH_STEPS))
                        d_lambda = gr.Number(dbd["lambda_preservation"], label="λ (parameter preservation)",
                                             elem_id="db-lambda", info=_range(0, MAX_LAMBDA, whole=False))
                        d_model = _model_picker(registry, "db-model")
                        d_go = gr.Button("Train", variant="primary", elem_id="db-train")
                    with gr.Column(scale=3):
                        d_status = gr.Markdown(elem_id="db-status")
                        d_grid = gr.Image(label="4 views of the new subject", format="png", elem_id="db-grid")
                        d_files = gr.File(label="Downloads", file_count="multiple", elem_id="db-files")
            with gr.Tab("Gallery", id="gallery") as gallery_tab:
                r_refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
                r_ids = gr.State([])
                r_gallery = gr.Gallery(label="Runs of this server, newest first", columns=6, height=360,
                                       fit_columns=False, allow_preview=False, object_fit="contain", format="png",
                                       elem_id="runs-gallery")
                r_pick = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="runs-pick")
                r_info = gr.Markdown(elem_id="runs-info")
                r_images = gr.Gallery(label="Pictures", columns=4, height="auto", fit_columns=False,
                                      object_fit="contain", format="png", elem_id="runs-images")
                with gr.Row():
                    r_mesh = gr.Model3D(label="Mesh", clear_color=(1, 1, 1, 1), elem_id="runs-model3d")
                    r_video = gr.Video(label="Turntable", autoplay=True, loop=True, elem_id="runs-video")
                r_files = gr.File(label="Files", file_count="multiple", elem_id="runs-files")

        mv_inputs = [mv_prompt, mv_negative, mv_views, mv_elev, mv_az, mv_sampler, mv_steps, mv_guid, mv_seed, mv_model]
        mv_go.click(page_errors(h.generate), mv_inputs, [mv_status, mv_gallery, mv_grid, mv_cams, mv_files],
                    api_name="generate", show_progress_on=mv_gallery, **HEAVY)
        mv_model.change(page_errors(h.on_multiview_model), mv_model, [mv_sampler, mv_steps, mv_guid], **LIGHT)
        t3d_out = [t_status, t_preview, t_live, t_files, t_glb, t_mp4]
        clear_3d = (lambda: (None, None), None, [t_mesh, t_video])  # the previous run's mesh and video go
        runs_refresh = (page_errors(h.runs_3d), None, t_runs)
        run = t_go.click(page_errors(h.text_to_3d), [t_prompt, t_steps, t_res, t_seed, t_guid, t_model], t3d_out,
                         api_name="text_to_3d", show_progress_on=t_status, **HEAVY, **STREAMED)
        run.success(h.show_3d, [t_glb, t_mp4], [t_mesh, t_video], **LIGHT)
        run.then(*runs_refresh, **LIGHT)
        t_go.click(*clear_3d, **LIGHT)
        t_go.click(*runs_refresh, **LIGHT)  # the new run joins the list (it may start after others in the queue)
        t_cancel.click(page_errors(h.cancel), None, t_status, api_name="cancel", **OUTSIDE_QUEUE)
        t_model.change(page_errors(h.on_text_to_3d_model), t_model, [t_steps, t_res, t_guid], **LIGHT)
        t3d_tab.select(*runs_refresh, **LIGHT)
        t_runs_refresh.click(*runs_refresh, api_name="runs_3d", **OUTSIDE_QUEUE)
        t_runs.input(*clear_3d, **LIGHT)
        t_runs.input(page_errors(h.open_3d), t_runs, t3d_out, api_name="open_3d", show_progress_on=t_status,
                     **FOLLOW).success(h.show_3d, [t_glb, t_mp4], [t_mesh, t_video], **LIGHT)
        t_resume.click(*clear_3d, **LIGHT)
        resumed = t_resume.click(page_errors(h.resume_3d), t_runs, t3d_out, api_name="resume_3d",
                                 show_progress_on=t_status, **HEAVY, **STREAMED)
        resumed.success(h.show_3d, [t_glb, t_mp4], [t_mesh, t_video], **LIGHT)
        resumed.then(*runs_refresh, **LIGHT)
        pickers = [mv_model, t_model, d_model]
        d_go.click(page_errors(h.dreambooth), [d_photos, d_token, d_class, d_steps, d_lambda, d_model],
                   [d_status, d_grid, d_files, *pickers], api_name="dreambooth",
                   show_progress_on=d_status, **HEAVY, **STREAMED)
        runs_out = [r_gallery, r_ids, r_pick]
        r_refresh.click(page_errors(h.list_runs), None, runs_out, api_name="list_runs", **OUTSIDE_QUEUE)
        gallery_tab.select(page_errors(h.list_runs), None, runs_out, **LIGHT)
        r_gallery.select(h.select_run, r_ids, r_pick, **LIGHT)
        r_pick.change(page_errors(h.open_run), r_pick, [r_info, r_images, r_mesh, r_video, r_files],
                      api_name="open_run", **OUTSIDE_QUEUE, **RAW)
        demo.load(page_errors(h.model_choices), None, pickers, **LIGHT)
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    demo.mvdream3d_out_dir = out  # read by launch_app: the only folder served
    demo.mvdream3d_handlers = h  # launch_app stops its text-to-3D runs (resumable) when the server stops
    return demo


def launch_app(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
               auth: list[tuple[str, str]] | None = None, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve ``demo`` on ``host:port`` (loopback by default; a public share link only when asked), serving
    files only from its output folder, uploads limited to 10 MB each. ``block=False`` returns at once; with
    ``block=True`` it returns when the server stops, after its text-to-3D runs have saved a checkpoint."""
    out = Path(demo.mvdream3d_out_dir)
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, allowed_paths=[str(out)],
                max_file_size="10mb", prevent_thread_lock=not block, quiet=quiet, show_error=False,
                ssr_mode=False, theme=gr.themes.Soft(), css=CSS, footer_links=["api"])
    if block:  # the server has stopped (Ctrl-C, SIGTERM): runs still going save a checkpoint, resumable
        saved = demo.mvdream3d_handlers.shutdown()
        if saved and not quiet:
            print(f"stopped {len(saved)} text-to-3D run(s) with a checkpoint; resume them from the Runs list")
    return demo
