"""Small trained runs for the `dchml serve` tests, built once per test session (a second test
module finds them in the session's temporary folder):

- `feature_run`: the built-in synthetic generator's features and bag-of-words rows (no
  vocabulary, no image files): item and feature-vector search only;
- `image_run`: a text-list folder of JPEG files with captions, whose image features were made by
  the (seeded random) AlexNet backbone: caption search through the vocabulary, image upload
  through the backbone, thumbnails from the listed files;
- `start_server`: a real uvicorn server on a free loopback port, in a thread.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from image_data import make_textlist

TINY = dict(bits=16, epochs=2, batch_size=32, lr=0.05, eval_every=1, proxy_steps=200, topk=100, image_hidden=128,
            text_hidden=128)
IMAGE_SIZE = 64


def _train(data, out: Path, **settings) -> Path:
    from dchml.app.experiment import run_experiment
    from dchml.method.config import TrainConfig

    run_experiment(data, TrainConfig(**{**TINY, **settings}), str(out), log=None)
    return out / "checkpoint.pt"


def _once(root: Path, name: str, build):
    """Build into root/name unless a finished build is there (marked by a 'done' file)."""
    folder = root / name
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        (folder / "done").write_text("ok")
    return folder


def feature_run(root: Path) -> dict:
    from dchml.data import make_synthetic, save_npz

    def build(folder):
        data = make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=40, n_query=60, n_train=150, seed=3,
                              image_noise=0.5, label_noise=0.05, text_background=0.3)
        save_npz(data, folder / "tiny.npz")
        from dchml.data import load_dataset

        _train(load_dataset(str(folder / "tiny.npz")), folder / "run")

    folder = _once(root, "feature_run", build)
    return {"checkpoint": folder / "run" / "checkpoint.pt", "data": folder / "tiny.npz"}


def image_run(root: Path) -> dict:
    from dchml.data import load_dataset
    from dchml.method.features import extract_rows, image_extractor

    def build(folder):
        images = make_textlist(folder / "set", n=48, size=IMAGE_SIZE, seed=1)
        pixels = load_dataset(str(images), image_size=IMAGE_SIZE, stream_images=False).image
        extractor = image_extractor("alexnet", "random", IMAGE_SIZE)
        np.save(images / "features.npy", extract_rows(extractor, pixels).numpy())
        data = load_dataset(str(images), image_size=IMAGE_SIZE)  # features.npy now: images.txt only counted
        # What `dchml features` records about the backbone that made the features.
        encoders = {**data.encoders, "image": {"backbone": "alexnet", "weights": "random",
                                               "image_size": IMAGE_SIZE, "skipped": []}}
        # 20 epochs (~2 s): codes good enough that a caption or a photo finds its kind on the page
        _train(dataclasses.replace(data, encoders=encoders), folder / "run", bits=32, epochs=20, batch_size=16,
               lr=1e-3, eval_every=5)

    folder = _once(root, "image_run", build)
    return {"checkpoint": folder / "run" / "checkpoint.pt", "data": folder / "set"}


def app_for(run: dict, *extra):
    """(ASGI app, SearchService) over a run, built by `dchml serve`'s own code from its arguments."""
    from dchml.app.arguments import build_parser
    from dchml.app.serve.command import build

    args = build_parser().parse_args(["serve", "--checkpoint", str(run["checkpoint"]), "--data", str(run["data"]),
                                      "--workers", "0", *extra])
    app, service, _ = build(args)
    return app, service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread; stop() ends it."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off",
                                server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def set_threads():
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
