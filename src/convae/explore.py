"""``convae explore RUN``: a trained model in the browser — your own image and its reconstruction, sliders along
the latent space's main directions, interpolations, samples from the prior and a clickable map of the test set.

Two parts: ``Explorer`` computes everything from ``convae.load``'s model (plain Python, what the tests and the load
test call), and ``build_app`` lays it out as a Gradio app (the field's convention for a model's demo page; an
optional extra, ``pip install 'convae[explore]'``). Uploads are opened with the reader training used for a folder
of images (its decompression-bomb guard included) and prepared by the same function training's cache was filled
by, so a file's reconstruction is ``convae.load(RUN).reconstruct`` of that file.

The directions of the sliders are the principal directions of the posterior means of (up to) 1,000 test images,
in units of their standard deviation: they exist for every model (a flow's or a hierarchy's latents included),
where "the most active units" only exist for a diagonal Gaussian posterior.
"""


import base64
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.folder import open_image
from .errors import ConfigError, DataError
from .evaluation.latents import latent_means
from .inference import TrainedModel
from .objectives import bits_per_dim
from .visualisation import tile

SLIDERS = 8            # directions shown
SLIDER_RANGE = 3.0     # +- standard deviations along each
MAP_IMAGES = 1000      # test images on the latent map (and behind the directions)
MAX_UPLOAD = "10mb"    # what the page takes; a larger file is refused with a message there
PICTURE_HEIGHT = 256   # pixels a picture takes on the page (small images are drawn larger, pixel for pixel)
# a 32-px reconstruction drawn in a 256-px box: scaled up whole, its pixels shown as squares rather than blurred
CSS = (".convae-picture img {width: 100% !important; height: 100% !important; object-fit: contain; "
       "image-rendering: pixelated}")


class Explorer:
    """What the page computes, from a trained model: every result is an image (uint8 H x W x C) or a number. The
    page calls it from many threads at once: the model is in eval mode under no_grad, where a forward pass writes
    nothing, so requests run side by side (a pixel-by-pixel sample does not hold up a slider)."""

    def __init__(self, model: TrainedModel, map_images: int = MAP_IMAGES):
        self.model = model
        self.vae = model.model
        data = model.run.data()
        test = model.run.test_set(data)
        self.test = test
        self.n = min(map_images, len(test))
        p = model.param
        with torch.no_grad():
            self.means = latent_means(self.vae, _Slice(test, self.n)).double().cpu()  # N x D
        self.labels = test.labels[:self.n].cpu() if test.labels is not None else data.test_labels[:self.n].cpu()
        centred = self.means - self.means.mean(0)
        _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
        k = min(SLIDERS, directions.shape[0])
        self.directions = directions[:k]                                    # k x D, unit vectors
        self.spread = (singular[:k] / math.sqrt(max(1, self.n - 1))).clamp(min=1e-6)  # std along each
        self.map = (centred @ directions[:2].T).numpy() if directions.shape[0] >= 2 else np.zeros((self.n, 2))
        self.class_names = model.class_names
        self.device, self.dtype = p.device, p.dtype

    # -- your own image -------------------------------------------------------------------------------------------

    def prepare_file(self, path: str | Path) -> torch.Tensor:
        """The file as training prepared its images: opened as a folder's file is (EXIF, the pixel guard), then the
        run's preparation. A file that is not an image, or too large, is a ConfigError with the reason."""
        try:
            image = open_image(Path(path))
        except DataError as e:
            raise ConfigError(str(e).replace(str(path), Path(path).name)) from None
        return self.model.prepare(image)

    def labels_for(self, label) -> torch.Tensor | None:
        if not self.vae.classes:
            return None
        return self.model.prepare_labels(0 if label in (None, "") else label, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, label=None) -> torch.Tensor:
        """The representative z (what ``reconstruct`` decodes), 1 x D."""
        return self.vae.posterior_mean(x, self.labels_for(label)).double().cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, label=None) -> np.ndarray:
        picture = self.vae.generate(z.to(self.device, self.dtype), labels=self.labels_for(label))
        return as_picture(picture[0])

    @torch.no_grad()
    def score(self, x: torch.Tensor, label=None) -> str:
        """The image's one-sample -ELBO (a fixed draw), in bits/dim where the likelihood is discrete."""
        out = self.vae(x, self.labels_for(label), generator=torch.Generator(device=self.device).manual_seed(0))
        neg_elbo = self.vae.loss_terms(out, x).total.item()
        said = f"−ELBO {neg_elbo:.2f} nats"
        if self.vae.likelihood.discrete:
            said += f" = {bits_per_dim(neg_elbo, x[0].numel()):.4f} bits/dim"
        return said

    def reconstruct_file(self, path, label=None) -> tuple[np.ndarray, np.ndarray, str, list[float]]:
        """(the image as the model sees it, its reconstruction, its score, its z)."""
        x = self.prepare_file(path)
        z = self.encode(x, label)
        return as_picture(x[0]), self.decode(z, label), self.score(x, label), z[0].tolist()

    # -- the latent space -----------------------------------------------------------------------------------------

    def coordinates(self, z: list[float]) -> list[float]:
        """Where ``z`` lies along each direction, in standard deviations (the sliders' values for it)."""
        centred = torch.tensor(z, dtype=torch.float64) - self.means.mean(0)
        return ((self.directions @ centred) / self.spread).tolist()

    def moved(self, z: list[float], values: list[float]) -> torch.Tensor:
        """``z`` with its coordinates along the directions set to ``values`` (standard deviations)."""
        z0 = torch.tensor(z, dtype=torch.float64)
        delta = torch.tensor(values, dtype=torch.float64) - torch.tensor(self.coordinates(z), dtype=torch.float64)
        return (z0 + (delta * self.spread) @ self.directions)[None]

    def slide(self, z: list[float], values: list[float], label=None) -> np.ndarray:
        return self.decode(self.moved(z, values), label)

    def interpolate(self, path_a, path_b, steps: int = 8, spherical: bool = False, label=None) -> list[np.ndarray]:
        """The pictures of ``steps`` points from the first image's z to the second's, linear or along the great
        circle (slerp); the ends are the two reconstructions."""
        za, zb = (self.encode(self.prepare_file(p), label)[0] for p in (path_a, path_b))
        points = [slerp(za, zb, t) if spherical else (1 - t) * za + t * zb
                  for t in np.linspace(0.0, 1.0, max(2, int(steps)))]
        return [self.decode(point[None], label) for point in points]

    @torch.no_grad()
    def samples(self, seed: int = 0, n: int = 16, label=None) -> np.ndarray:
        """``n`` pictures from the model's own prior (a plug-in's included), seeded; of one class where given."""
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        labels = None
        if self.vae.classes:
            labels = (self.model.prepare_labels(label, n) if label not in (None, "") else
                      torch.randint(self.vae.classes, (n,), generator=generator, device=self.device))
        pictures = self.vae.sample(n, generator=generator, labels=labels)
        return as_picture(tile(pictures.float().cpu(), int(math.sqrt(n)) or 1))

    # -- the map ----------------------------------------------------------------------------------------------------

    def nearest(self, point: tuple[float, float]) -> int:
        """The test image whose place on the map is nearest ``point``."""
        return int(np.argmin(((self.map - np.asarray(point)) ** 2).sum(1)))

    def picked(self, point: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, str]:
        """For a point of the map: the decoded z of its nearest test image, that image, and what it is."""
        k = self.nearest(point)
        label = int(self.labels[k]) if self.vae.classes else None
        x = self.test.floats(k, k + 1, self.dtype, self.device)
        name = self.class_names[int(self.labels[k])] if self.class_names else str(int(self.labels[k]))
        return (self.decode(self.means[k:k + 1], label), as_picture(x[0]),
                f"test image {k} (label {name}) at ({self.map[k, 0]:.2f}, {self.map[k, 1]:.2f})")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake): along the great circle between ``a`` and ``b``, scaled between norms."""
    na, nb = a.norm(), b.norm()
    cos = torch.clamp((a @ b) / (na * nb).clamp(min=1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def as_picture(image: torch.Tensor) -> np.ndarray:
    """C x H x W in [0, 1] -> uint8 H x W x 3 (gray repeated), as the page and a PNG show it."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return array.permute(1, 2, 0).contiguous().numpy()


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(picture: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


class _Slice:
    """The first ``n`` images of an ``EvalImages``, as one (what ``latent_means`` reads)."""

    def __init__(self, data, n: int):
        self.data, self.n = data, n

    def __len__(self) -> int:
        return self.n

    def floats(self, start, stop, dtype, device):
        return self.data.floats(start, min(stop, self.n), dtype, device)

    def labels_of(self, start, stop, device):
        return self.data.labels_of(start, min(stop, self.n), device)


# -- the page ---------------------------------------------------------------------------------------------------------


def map_figure(explorer: Explorer) -> tuple[np.ndarray, callable]:
    """The latent map as a picture, and the function from a clicked pixel to the map's coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    colours = explorer.labels.numpy() if explorer.labels is not None else None
    ax.scatter(explorer.map[:, 0], explorer.map[:, 1], c=colours, cmap="tab10", s=6)
    ax.set_xlabel("principal direction 1")
    ax.set_ylabel("principal direction 2")
    ax.set_title("test images' posterior means (click one)", fontsize=10)
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    inverse = ax.transData.inverted()
    plt.close(fig)

    def to_data(x: float, y: float) -> tuple[float, float]:
        return tuple(inverse.transform((x, height - y)))  # display coordinates count from the bottom

    return picture, to_data


def build_app(explorer: Explorer):
    """The Gradio page: five panels over one ``Explorer``."""
    import gradio as gr

    model = explorer.model
    k = len(explorer.directions)
    conditional = bool(explorer.vae.classes)
    choices = (explorer.class_names or [str(c) for c in range(explorer.vae.classes)]) if conditional else []
    map_picture, to_data = map_figure(explorer)

    def upload(path, label):
        if path is None:
            return None, None, "", None, *([0.0] * k)
        try:
            seen, reconstruction, said, z = explorer.reconstruct_file(path, label)
        except ConfigError as e:
            raise gr.Error(f"This file cannot be used: {e}") from None
        return seen, reconstruction, said, z, *explorer.coordinates(z)

    def slide(z, label, *values):
        if z is None:
            raise gr.Error("Upload an image first: the sliders start at its z")
        return explorer.slide(z, list(values), label)

    def reset(z):
        return tuple(explorer.coordinates(z)) if z is not None else tuple([0.0] * k)

    def interpolate(a, b, steps, kind, label):
        if a is None or b is None:
            raise gr.Error("Give two images")
        try:
            pictures = explorer.interpolate(a, b, steps, kind == "spherical", label)
        except ConfigError as e:
            raise gr.Error(f"This file cannot be used: {e}") from None
        return as_picture(tile(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255, len(pictures)))

    def sample(seed, label):
        return explorer.samples(int(seed or 0), 16, label if conditional else None)

    def pick(event: gr.SelectData):
        decoded, original, said = explorer.picked(to_data(*event.index))
        return decoded, original, said

    def picture(label: str, element: str):
        """An output picture: drawn in a PICTURE_HEIGHT box, a small image scaled up pixel for pixel."""
        return gr.Image(label=label, format="png", height=PICTURE_HEIGHT, elem_classes=["convae-picture"],
                        interactive=False, elem_id=element)

    title = (f"convae explore — {model.config.model}, step {model.run.step}, {model.channels}x"
             f"{model.config.image_size}x{model.config.image_size}, latent_dim {model.latent_dim}")
    with gr.Blocks(title="convae explore") as app:
        gr.Markdown(f"## {title}\n{model.run.path}")
        z_state = gr.State(None)
        label = gr.Dropdown(choices, value=choices[0] if choices else None, label="class (a conditional model)",
                            visible=conditional, elem_id="label")
        with gr.Tab("Your image"):
            with gr.Row():
                # a file, not gr.Image: Gradio would decode an image itself, without the guards (a decompression
                # bomb, a file that is no image) and the preparation training used
                upload_box = gr.File(type="filepath", label="your image (or drop one)", elem_id="upload",
                                     file_types=["image"])
                seen = picture("as the model sees it", "seen")
                reconstruction = picture("reconstruction", "reconstruction")
            score = gr.Textbox(label="score", interactive=False, elem_id="score")
        with gr.Tab("Latent sliders"):
            gr.Markdown(f"The {k} principal directions of the test images' posterior means, in standard deviations; "
                        "they start at your image's z.")
            sliders = [gr.Slider(-SLIDER_RANGE * 2, SLIDER_RANGE * 2, value=0.0, step=0.05,
                                 label=f"direction {j + 1}", elem_id=f"slider{j}") for j in range(k)]
            moved = picture("decoded", "moved")
            reset_button = gr.Button("reset to the image's z", elem_id="reset")
        with gr.Tab("Interpolation"):
            with gr.Row():
                first = gr.File(type="filepath", label="from", elem_id="first", file_types=["image"])
                second = gr.File(type="filepath", label="to", elem_id="second", file_types=["image"])
            steps = gr.Slider(2, 16, value=8, step=1, label="steps", elem_id="steps")
            kind = gr.Radio(["linear", "spherical"], value="linear", label="path", elem_id="kind")
            go = gr.Button("interpolate", elem_id="interpolate")
            strip = picture("the path", "strip")
        with gr.Tab("Samples"):
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
            draw = gr.Button("draw from the prior", elem_id="draw")
            samples = picture("samples", "samples")
        with gr.Tab("Latent map"):
            with gr.Row():
                latent_map = gr.Image(value=map_picture, label="latent map", interactive=False, elem_id="map",
                                      format="png")
                picked = picture("decoded at that point", "picked")
                nearest = picture("the nearest test image", "nearest")
            where = gr.Textbox(label="point", interactive=False, elem_id="where")

        upload_box.change(upload, [upload_box, label], [seen, reconstruction, score, z_state, *sliders],
                          api_name="upload")
        for slider in sliders:
            slider.change(slide, [z_state, label, *sliders], moved, api_name=False, trigger_mode="always_last")

        def slide_at(z: list[float], values: list[float]) -> str:
            """The picture for z with its coordinates along the directions set to ``values`` (standard deviations),
            as a PNG data URL: what a slider move computes, for scripts and the load test."""
            return png_data_url(explorer.slide(z, values))

        gr.api(slide_at, api_name="slide")
        reset_button.click(reset, z_state, sliders, api_name=False)
        go.click(interpolate, [first, second, steps, kind, label], strip, api_name="interpolate")
        draw.click(sample, [seed, label], samples, api_name="samples", concurrency_id="draw",
                   concurrency_limit=1)
        latent_map.select(pick, None, [picked, nearest, where], api_name=False)
    return app


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """The page of ``explorer`` on ``host``:``port`` (requests side by side, uploads up to ``MAX_UPLOAD``); with
    ``block=False`` it serves from a thread and the app is returned (``app.close()`` stops it)."""
    app = build_app(explorer)
    app.queue(default_concurrency_limit=8).launch(server_name=host, server_port=port, quiet=True, css=CSS,
                                                  max_file_size=MAX_UPLOAD, show_error=True, footer_links=[],
                                                  prevent_thread_lock=not block)
    return app


def log_exploration(run_path: Path, address: str) -> None:
    """The one line explore writes into the run folder: that the run was explored, when and where."""
    import datetime

    with open(Path(run_path) / "log.txt", "a") as log:
        log.write(f"explored with convae explore at {address} on "
                  f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")


__all__ = ["Explorer", "build_app", "log_exploration", "png_bytes", "serve", "slerp"]
