"""``convae explore RUN``: the trained model in the browser (``convae.explore``), served on this machine."""

from __future__ import annotations

import argparse
import errno
import socket

from ..config import DEVICES
from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="look inside a trained model in the browser: your images, latent sliders, "
                                       "interpolations, samples, a latent map",
                       description="Serve a page (Gradio) on the run's model: upload an image and see it prepared "
                                   "as training prepared its data and reconstructed; move sliders along the latent "
                                   "space's principal directions; interpolate between two images; draw from the "
                                   "prior; click the test set's latent map. Needs `pip install 'convae[explore]'`.")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("--step", type=int, metavar="N", help="the checkpoint of step N (default the newest)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 shares it)")
    p.add_argument("--port", type=int, default=7860, metavar="N", help="default 7860")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the model runs (default auto)")
    p.set_defaults(handler=cmd_explore)


def check_port(host: str, port: int) -> None:
    """One line where the port cannot be listened on (in use, or not allowed), before the model is loaded."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: a port is 1..65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            why = ("in use (another program listens there)" if e.errno == errno.EADDRINUSE else
                   f"not available ({e.strerror})")
            raise ConfigError(f"--port {port}: {why} on {host}; give another --port") from None


def cmd_explore(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("convae explore needs Gradio: pip install 'convae[explore]' (or pip install "
                          "gradio)") from None
    from ..explore import Explorer, log_exploration, serve
    from ..inference import TrainedModel
    from ..runs import open_run

    check_port(args.host, args.port)
    model = TrainedModel(open_run(args.run, args.device, step=args.step))
    explorer = Explorer(model)
    address = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    shared = args.host not in ("127.0.0.1", "localhost", "::1")
    print(f"convae explore: {model.run.path} (model {model.config.model}, step {model.run.step}) at {address} "
          + ("(listening on every address of --host: anyone who reaches this machine can use it)" if shared else
             "(this machine only; --host 0.0.0.0 to share it)") + "; Ctrl-C stops it", flush=True)
    log_exploration(model.run.path, address)
    serve(explorer, args.host, args.port)
    return 0


__all__ = ["add_parser", "check_port"]
