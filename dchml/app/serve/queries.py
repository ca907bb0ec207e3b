"""What a client sends -> packed codes of one modality, with the model and what its checkpoint
recorded about raw inputs (`checkpoint["data"]["encoders"]`, read by dchml.app.raw_inputs):

- a caption: through the saved vocabulary (or CLIP's text tower); a model trained on numeric
  bag-of-words rows has no vocabulary, and says so instead of guessing;
- an uploaded image: pixels for a model with an image backbone, else the backbone recorded as
  the maker of its image features; a model on features of unknown origin says so;
- a feature vector: the row the model's net takes, checked for length and finite values;
- an item of the data set: its row in that modality.

Each capability is decided once, at start-up, with the reason when it is missing, so the page can
hide what cannot work and the API can answer with that reason.
"""
from __future__ import annotations

import numpy as np
import torch

from ...data.dataset import DataError
from ...data.images import ImageSource
from ...method.encoding import encode
from ..raw_inputs import CaptionReader, feature_extractor
from . import imaging
from .errors import ServeError

MODALITIES = ("image", "text")


def model_modalities(model) -> tuple:
    """The modalities a model encodes (single-modality models say which; DCHML has both)."""
    return tuple(m for m in getattr(model, "modalities", MODALITIES) if m in MODALITIES)


class QueryEncoder:
    def __init__(self, model, data, encoders: dict | None, device):
        self.model, self.device, self.data = model, device, data
        self.modalities = model_modalities(model)
        spec = model.spec() if hasattr(model, "spec") else {}
        self.input_dims = {"image": spec.get("image_dim"), "text": spec.get("text_dim")}
        # Items are read one at a time per request: no DataLoader worker processes for that.
        self._sources = {}
        for modality in self.modalities:
            source = getattr(data, modality, None)
            if isinstance(source, ImageSource):
                source = source.with_options(workers=0)
            if source is not None:
                self._sources[modality] = source
        self.captions, self.caption_problem = None, None
        if "text" not in self.modalities:
            self.caption_problem = "this model has no text network, so it cannot search with a caption"
        else:
            try:
                self.captions = CaptionReader(encoders, device=device,
                                              hint="; search with an item of the data set or a feature vector")
            except DataError as exc:
                self.caption_problem = str(exc)
        self.extractor, self.image_size, self.image_problem = None, None, None
        if "image" not in self.modalities:
            self.image_problem = "this model has no image network, so it cannot search with an image"
        elif self.input_dims["image"] is None:
            self.image_size = int(spec.get("image_size", 224))  # the model takes pixels itself
        else:
            try:
                self.extractor = feature_extractor(encoders, device=device,
                                                   hint="; search with an item of the data set or a feature vector")
                self.image_size = int(self.extractor.image_size)
            except DataError as exc:
                self.image_problem = str(exc)

    def capabilities(self) -> dict:
        return {"caption": {"available": self.captions is not None, "reason": self.caption_problem},
                "image_upload": {"available": self.image_size is not None, "reason": self.image_problem},
                "vector": {m: self.input_dims[m] for m in self.modalities if self.input_dims[m] is not None},
                "item": sorted(self._sources)}

    def _codes(self, batch, modality: str) -> torch.Tensor:
        return encode(self.model, batch, modality, device=self.device)

    def caption(self, text: str) -> tuple[torch.Tensor, list[str]]:
        """(packed code (1, nbytes), warnings) of a caption."""
        if self.captions is None:
            raise ServeError(422, f"caption search is not available: {self.caption_problem}")
        if not text.strip():
            raise ServeError(422, "the caption is empty")
        warnings = []
        if self.captions.unknown([text]):
            warnings.append("none of the caption's words is in the model's vocabulary, so its code carries no "
                            "text information and the ranking is arbitrary")
        return self._codes(self.captions([text]), "text"), warnings

    def image(self, upload: bytes) -> torch.Tensor:
        """Packed code of an uploaded image file (checked and decoded by imaging.decode_upload)."""
        if self.image_size is None:
            raise ServeError(422, f"image search is not available: {self.image_problem}")
        pixels = torch.from_numpy(imaging.decode_upload(upload, self.image_size))[None]
        if self.extractor is not None:
            from ...method.features import extract_rows

            pixels = extract_rows(self.extractor, pixels, self.device)
        return self._codes(pixels, "image")

    def vector(self, modality: str, values: list) -> torch.Tensor:
        """Packed code of one input row of `modality` given as numbers."""
        self._check_modality(modality)
        dim = self.input_dims[modality]
        if dim is None:
            raise ServeError(422, f"this model's {modality} network takes pixels, not feature vectors; "
                                  "upload the image instead")
        if len(values) != dim:
            raise ServeError(422, f"the model's {modality} network takes vectors of length {dim}, got {len(values)}")
        with np.errstate(over="ignore"):
            row = np.asarray(values, dtype=np.float32)
        if not np.isfinite(row).all():
            raise ServeError(422, "the vector holds NaN, infinite values or values beyond float32's range")
        return self._codes(torch.from_numpy(row)[None], modality)

    def item(self, modality: str, row: int) -> torch.Tensor:
        """Packed code of data row `row` in `modality`."""
        self._check_modality(modality)
        source = self._sources.get(modality)
        if source is None:
            raise ServeError(422, f"this data set has no {modality} items")
        try:
            return self._codes(source[[row]], modality)
        except DataError as exc:  # an image file that went missing or is corrupt
            raise ServeError(422, f"item {row}'s {modality} cannot be read: {exc}") from None

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ServeError(422, f"this model has no {modality} network (its modalities: "
                                  f"{', '.join(self.modalities)})")
