"""Raw queries -> the rows a trained model takes, with what its checkpoint recorded about the
training data (`checkpoint["data"]["encoders"]`):

- captions (one per line of a .txt file): through the saved vocabulary, or CLIP's text tower
  when the text features came from it;
- image files (one path per line of a .txt file, relative to it): streamed as pixels to a model
  trained on pixels, or through the recorded backbone when the model was trained on features
  extracted by `dchml features`.

Used by `dchml encode --input captions.txt` / `--input images.txt` and by `dchml serve` (one
caption or uploaded photo per request), so a user can search with a sentence or a photo.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.dataset import DataError
from ..data.textlist import read_captions
from ..data.vocab import Vocabulary


def text_rows(encoders: dict, path: str, *, device="cpu", log=None) -> torch.Tensor:
    """The model's text input for every line of `path`."""
    captions = read_captions(Path(path))
    if not captions:
        raise DataError(f"{path}: no captions (one per line)")
    reader = CaptionReader(encoders, device=device, hint="; give a .npy of bag-of-words rows instead")
    empty = reader.unknown(captions)
    if empty and log:
        log(f"note: {empty} of {len(captions)} captions contain no word of the model's vocabulary; their codes "
            "carry no text information")
    return reader(captions)


class CaptionReader:
    """Captions (strings) -> the model's text rows, with what the checkpoint recorded: the saved
    vocabulary, or CLIP's text tower when the text features came from it (built once, so a server
    can read many captions). Raises DataError saying why when the checkpoint cannot read captions;
    `hint` is appended to that message (what the caller can do instead)."""

    def __init__(self, encoders: dict, *, device="cpu", hint: str = ""):
        text = (encoders or {}).get("text")
        if text is None:
            raise DataError("this checkpoint was trained on ready-made bag-of-words rows, so it has no vocabulary "
                            "to read captions with" + hint)
        self.vocabulary = self.clip = None
        if text.get("kind") == "clip":
            from ..method.backbones import ClipTextEncoder

            weights = text.get("weights")
            if not weights or not os.path.isfile(weights):
                raise DataError(f"the CLIP text weights the features were made with are not found ({weights})")
            self.clip = ClipTextEncoder(text["backbone"], weights).to(device)
        else:
            self.vocabulary = Vocabulary.from_state(text)

    def __call__(self, captions: list) -> torch.Tensor:
        if self.clip is not None:
            return torch.cat([self.clip(captions[s:s + 256]).cpu() for s in range(0, len(captions), 256)])
        return self.vocabulary.transform(captions)

    def unknown(self, captions: list) -> int:
        """How many captions hold no word the model knows (always 0 for CLIP, which reads any text)."""
        if self.vocabulary is None:
            return 0
        return sum(self.vocabulary.known_words(c) == 0 for c in captions)


def image_rows(encoders: dict, model_spec: dict, path: str, *, device="cpu", workers: int = 2):
    """The model's image input for the image files listed in `path`: an ImageSource for a model
    on pixels, else features from the backbone recorded in `encoders["image"]`."""
    from ..data.images import file_source
    from ..data.textlist import image_names

    names = image_names(Path(path))
    if not names:
        raise DataError(f"{path}: no image file names (one per line)")
    folder = Path(path).parent
    if model_spec["image_dim"] is None:
        return file_source(names, folder, model_spec["image_size"], origin=str(path), unit="line", workers=workers)
    extractor = feature_extractor(encoders, device=device,
                                  hint="; give a .npy of features made the same way instead")
    source = file_source(names, folder, extractor.image_size, origin=str(path), unit="line", workers=workers)
    from ..method.features import extract_rows

    return extract_rows(extractor, source, device)


def feature_extractor(encoders: dict, *, device="cpu", hint: str = ""):
    """The frozen backbone recorded in `encoders["image"]` that made a checkpoint's image features
    (its `image_size` is the side images are decoded at). Raises DataError saying why when the
    checkpoint does not record one or its weights are gone; `hint` is appended to the first."""
    image = (encoders or {}).get("image")
    if image is None:
        raise DataError("this checkpoint was trained on ready-made image features, so it cannot read image files"
                        + hint)
    weights = image.get("weights")
    if weights != "random" and not (weights and os.path.isfile(weights)):
        raise DataError(f"the backbone weights the features were made with are not found ({weights})")
    from ..method.features import image_extractor

    return image_extractor(image["backbone"], weights, image["image_size"]).to(device)
