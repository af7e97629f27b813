"""Latency of a slider move in `convae explore`, per model (issue 42): 8 clients on the loopback, each its own
Gradio client, move sliders for 30 s; every answer is checked against the decoder's output for that z; p50/p95
latency, moves per second and the server's resident memory (before, after one round, after a second) are written to
docs/data/explore_load.json. Each model is trained briefly first (its weights do not change the cost of a move).

    .venv/bin/python benchmarks/explore_load.py [SECONDS]
"""

import json
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import convae
from convae.config import TrainConfig
from convae.explore import Explorer, serve
from convae.training import train

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
CASES = [("fc", 32, {}), ("seed", 32, {}), ("resize", 32, {}), ("resize", 128, {"likelihood": "logistic"})]


def colour_folder(root: Path, size: int, n: int = 200) -> Path:
    """Flat-coloured discs on tinted backgrounds: a stand-in for a user's folder at 128 px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    folder = root / f"discs{size}"
    folder.mkdir()
    for i in range(n):
        image = np.ones((size, size, 3)) * rng.uniform(0.6, 1.0, 3)
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            image[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(0, 1, 3)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_round(port, explorer, z, clients=8, seconds=SECONDS):
    from gradio_client import Client

    latencies, wrong, stop = [], [0], time.monotonic() + seconds

    def client(k):
        rng = np.random.default_rng(k)
        talk = Client(f"http://127.0.0.1:{port}/", verbose=False)
        while time.monotonic() < stop:
            values = explorer.coordinates(z)
            values[k % len(values)] = float(rng.uniform(-3, 3))
            started = time.perf_counter()
            answer = talk.predict(z, values, api_name="/slide")
            latencies.append(time.perf_counter() - started)
            import base64
            import io

            from PIL import Image

            got = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.split(",", 1)[1]))).convert("RGB"))
            if not np.array_equal(got, explorer.slide(z, values)):
                wrong[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, wrong[0]


def main():
    root = Path(tempfile.mkdtemp(prefix="convae-explore-bench-"))
    rows = []
    for model, size, extra in CASES:
        data = {} if size == 32 else {"data": str(colour_folder(root, size))}
        out = root / f"{model}{size}"
        train(TrainConfig(model=model, image_size=size, max_steps=20, batch_size=32, quiet=True, report=False,
                          tensorboard=False, out=str(out), train_limit=2000 if size == 32 else None,
                          test_limit=500 if size == 32 else None, **data, **extra), log=lambda s: None)
        explorer = Explorer(convae.load(out, device="cpu"))
        _, _, _, z = explorer.reconstruct_file(write_first_test_image(explorer, root))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = serve(explorer, "127.0.0.1", port, block=False)
        before = resident_mb()
        first, wrong1 = load_round(port, explorer, z)
        after_first = resident_mb()
        second, wrong2 = load_round(port, explorer, z)
        after_second = resident_mb()
        app.close()
        row = {"model": model, "image_size": size, "clients": 8, "seconds": SECONDS, "moves": len(second),
               "moves_per_second": len(second) / SECONDS, "p50_ms": 1000 * float(np.percentile(second, 50)),
               "p95_ms": 1000 * float(np.percentile(second, 95)), "wrong": wrong1 + wrong2,
               "resident_mb": [before, after_first, after_second]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("Flags")), [])
    result = {"cpu": model_name, "flags": [f for f in flags if f.startswith(("avx", "amx"))],
              "python": platform.python_version(), "rows": rows}
    path = Path(__file__).resolve().parents[1] / "docs" / "data" / "explore_load.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


def write_first_test_image(explorer, root: Path) -> Path:
    from PIL import Image

    from convae.explore import as_picture

    path = root / "first.png"
    x = explorer.test.floats(0, 1, explorer.dtype, explorer.device)
    Image.fromarray(as_picture(x[0])).save(path)
    return path


if __name__ == "__main__":
    main()
