"""``mvdream3d serve``: start the web app (gradio, from the optional ``ui`` extra)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError, MissingExtraError

INSTALL_HINT = 'the web app needs gradio: pip install "mvdream3d[ui]"'


def parse_dreambooth_settings(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (values read as YAML) -> DreamBoothConfig fields, through the config core
    (:func:`mvdream3d.training.dreambooth.dreambooth_overrides`); ConfigError (a ValueError) naming an unknown
    key or a bad value."""
    if not items:
        return {}
    from ..training.dreambooth import dreambooth_overrides

    try:
        return dreambooth_overrides(items)
    except ConfigError as e:
        raise ConfigError(f"--dreambooth-set: {e}") from e


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(INSTALL_HINT) from e
    from .security import parse_auth

    auth = parse_auth(args.auth)
    dreambooth_settings = parse_dreambooth_settings(args.dreambooth_set)
    from .app import build_app, launch_app

    demo = build_app(model=args.model, out_dir=args.out, models_dir=args.models_dir, config=args.config,
                     overrides=args.set, dreambooth_settings=dreambooth_settings, device=args.device,
                     max_queue=args.max_queue)
    if auth is None and (args.share or args.host not in ("127.0.0.1", "localhost", "::1")):
        print(f"warning: serving {'a share link' if args.share else args.host} without a login: anyone who can reach "
              f"it can run jobs (add --auth USER:PASS)", file=sys.stderr)
    import signal

    def stop(signum: int, frame: Any) -> None:  # SIGTERM stops the server as Ctrl-C does (runs save a checkpoint)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    launch_app(demo, host=args.host, port=args.port, share=args.share, auth=auth)
    return 0


def add_serve_subparser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` (importing nothing heavy: gradio is loaded when the command runs)."""
    p = sub.add_parser("serve", help="web app: multi-view, text-to-3D, DreamBooth, gallery (needs mvdream3d[ui])",
                       description="Serves a gradio page on HOST:PORT (loopback by default). Heavy jobs run one at a "
                                   "time through a queue; results and uploads live under --out, the only folder "
                                   "the server gives files from.")
    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="model offered in the pickers: a name or a checkpoint path (repeatable; the first is the "
                        "default; default: the built-in model)")
    p.add_argument("--models-dir", default=None, help="also offer every .safetensors/.pt checkpoint of this folder")
    p.add_argument("--out", default="mvdream3d-web", help="output folder of the runs (default: ./mvdream3d-web)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio share link (off by default)")
    p.add_argument("--auth", default=None, metavar="USER:PASS|FILE",
                   help="require a login: USER:PASS, or a file of USER:PASS lines")
    p.add_argument("--config", default=None, help="text-to-3D config (builtin | mvdream-sd21 | ... | a YAML path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="text-to-3D config override, as for text-to-3d (repeatable)")
    p.add_argument("--dreambooth-set", action="append", default=[], metavar="KEY=VALUE",
                   help="DreamBooth setting for every run, e.g. train=lora or sample_steps=10 (repeatable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait in the queue (default 8)")
    p.set_defaults(func=cmd_serve)
