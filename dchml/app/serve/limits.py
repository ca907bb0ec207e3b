"""Every size the server accepts, in one place: the API, the request gate, the docs page and the
tests read them from here, so a limit is changed once and reported everywhere."""
from __future__ import annotations

MAX_K = 100                      # results per search; more is refused (422), not silently truncated
DEFAULT_K = 20
MAX_JSON_BYTES = 1 << 20         # a JSON request body (a 65,536-d feature vector is ~1 MB of text)
MAX_UPLOAD_BYTES = 10 << 20      # an uploaded image file
MAX_UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + (64 << 10)  # the multipart body around it
MAX_IMAGE_PIXELS = 40_000_000    # width x height of an uploaded or served image, checked before decoding
MAX_CAPTION_CHARS = 2_000
MAX_VECTOR_LENGTH = 65_536
MAX_SERVED_FILE_BYTES = 50 << 20  # a data set's image file larger than this is not decoded
THUMBNAIL_SIDE = 320             # served images are re-encoded JPEGs at most this many pixels a side
THUMBNAIL_CACHE = 2_048          # thumbnails kept in memory (~20 KB each)
# Decoded formats for uploads and served files (Pillow's names); anything else is 415 / not served.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


def as_dict() -> dict:
    """The limits a client needs to know (GET /api/info)."""
    return {"max_k": MAX_K, "default_k": DEFAULT_K, "max_json_bytes": MAX_JSON_BYTES,
            "max_upload_bytes": MAX_UPLOAD_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS,
            "max_caption_chars": MAX_CAPTION_CHARS, "max_vector_length": MAX_VECTOR_LENGTH,
            "image_formats": list(IMAGE_FORMATS)}
