"""Images in flows, as Prompt flow has them: flow inputs of type `image` (and images nested in
`list` / `object` inputs) written as `{"data:image/png;path": "logo.jpg"}` (relative to the flow
folder) or `{"data:image/png;base64": "..."}`, given to tools as `Image` objects (bytes with a
mime type); image outputs written back as `{"data:image/png;base64": "..."}` dicts, as Prompt
flow's serving endpoint returns them.

This runs in the flow process (the sandbox), never in the server. `url` images are refused:
the sandbox has no network to fetch them from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # one image a tool may receive
_KEY = re.compile(r"^data:image/([^;]*);(path|base64|url)$")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class InvalidImage(ValueError):
    """An image input that cannot be read; the message says why and how to write it."""


class PFBytes(bytes):
    """Bytes with a mime type (Prompt flow's `promptflow.contracts.multimedia.PFBytes`)."""

    def __new__(cls, value: bytes, *args: Any, **kwargs: Any) -> PFBytes:
        return super().__new__(cls, value)

    def __init__(self, value: bytes, mime_type: str, source_url: str | None = None) -> None:
        super().__init__()
        self._hash = hashlib.sha1(value).hexdigest()[:8]
        self._mime_type = mime_type.lower()
        self._source_url = source_url

    @property
    def source_url(self) -> str | None:
        return self._source_url

    def to_base64(self, with_type: bool = False) -> str:
        encoded = base64.b64encode(self).decode("ascii")
        return f"data:{self._mime_type};base64,{encoded}" if with_type else encoded


class Image(PFBytes):
    """An image a tool receives or returns (Prompt flow's `Image`)."""

    def __init__(
        self, value: bytes, mime_type: str | None = None, source_url: str | None = None
    ) -> None:
        super().__init__(value, mime_type or guess_mime(value), source_url)

    def __str__(self) -> str:
        return f"Image({self._hash})"

    def __repr__(self) -> str:
        return f"Image({self._hash})"


def guess_mime(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "image/*")


def is_image_dict(value: Any, message_format: str = "basic") -> bool:
    if message_format == "openai-vision":
        # {"type": "image_url", "image_url": {"url": ...}} or image_file with a path
        if not isinstance(value, dict) or len(value) != 2:
            return False
        kind = value.get("type")
        inner = value.get(kind) if isinstance(kind, str) else None
        return isinstance(inner, dict) and (
            (kind == "image_url" and "url" in inner) or (kind == "image_file" and "path" in inner)
        )
    return isinstance(value, dict) and len(value) == 1 and bool(_KEY.match(str(next(iter(value)))))


def _from_vision_dict(value: dict[str, Any], folder: Path) -> Image:
    if value["type"] == "image_file":
        return _from_path(str(value["image_file"]["path"]), folder)
    url = str(value["image_url"]["url"])
    if url.startswith("data:image/") and ";base64," in url:
        return _from_base64(url)
    if re.match(r"^(https?|ftp)://", url):
        return _from_url(url)
    raise InvalidImage(f"image url {url[:40]!r} is neither a url nor base64 data")


def _too_big(size: int) -> InvalidImage:
    return InvalidImage(
        f"image is {size} bytes; the limit is {MAX_IMAGE_BYTES} bytes (20 MiB): use a smaller image"
    )


def _checked(data: bytes) -> bytes:
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_big(len(data))
    return data


def _from_path(text: str, folder: Path, mime: str | None = None) -> Image:
    path = (folder / text).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise InvalidImage(f"image path {text!r} is outside the flow folder; name a file in it")
    if not path.is_file():
        raise InvalidImage(f"image file {text!r} not found in the flow folder")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise _too_big(path.stat().st_size)
    return Image(path.read_bytes(), mime)


def _from_base64(text: str, mime: str | None = None) -> Image:
    text = text.split(",")[-1]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:  # base64 is 4 characters for 3 bytes
        raise _too_big(len(text) * 3 // 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(
            f"image data is not valid base64 ({exc}); encode the file's bytes"
        ) from exc
    return Image(_checked(data), mime)


def create_image(value: Any, folder: Path, message_format: str = "basic") -> Image:
    """An image from what a flow input or a node's literal input holds."""
    if isinstance(value, PFBytes):
        return value if isinstance(value, Image) else Image(bytes(value), value._mime_type)
    if message_format == "openai-vision" and is_image_dict(value, message_format):
        return _from_vision_dict(value, folder)
    if isinstance(value, dict):
        if not is_image_dict(value):
            raise InvalidImage(
                'an image input is a dict like {"data:image/png;path": "logo.png"} '
                "(or ;base64 with the encoded bytes)"
            )
        key, data = next(iter(value.items()))
        match = _KEY.match(key)
        if match is None:  # is_image_dict matched it: never
            raise InvalidImage(f"{key!r} is not an image key")
        mime, kind = f"image/{match.group(1)}", match.group(2)
        if not isinstance(data, str):
            raise InvalidImage(f"the value of {key!r} must be a string")
        if kind == "url":
            return _from_url(data)
        if kind == "base64":
            return _from_base64(data, mime if match.group(1) != "*" else None)
        return _from_path(data, folder, mime)  # the key's type, as Prompt flow takes it
    if isinstance(value, str):
        if not value:
            raise InvalidImage("The image input should not be empty; give a path or base64 data")
        if value.startswith("data:image/") and ";base64," in value:
            return _from_base64(value)
        if re.match(r"^(https?|ftp)://", value):
            return _from_url(value)
        return _from_path(value, folder)
    raise InvalidImage(f"an image input is a string or a dict, not {type(value).__name__}")


def _from_url(url: str) -> Image:
    raise InvalidImage(
        f"image url {url!r} cannot be fetched: flows run without network access; "
        "give the image as ;path (a file in the flow folder) or ;base64"
    )


def load_nested(value: Any, folder: Path, message_format: str = "basic") -> Any:
    """Image dicts anywhere in a list / object input, as images."""
    if is_image_dict(value, message_format):
        return create_image(value, folder, message_format)
    if isinstance(value, list):
        return [load_nested(v, folder, message_format) for v in value]
    if isinstance(value, dict):
        return {k: load_nested(v, folder, message_format) for k, v in value.items()}
    return value


def load_inputs(
    types: dict[str, str], inputs: dict[str, Any], folder: Path, message_format: str = "basic"
) -> dict[str, Any]:
    """A line's inputs with its images loaded, as Prompt flow's `load_multimedia_data`."""
    loaded = dict(inputs)
    for name, kind in types.items():
        if name not in loaded or loaded[name] is None:
            continue
        try:
            if kind == "image":
                value = loaded[name]
                loaded[name] = (
                    [create_image(v, folder, message_format) for v in value]
                    if isinstance(value, list)
                    else create_image(value, folder, message_format)
                )
            elif kind in ("list", "object"):
                loaded[name] = load_nested(loaded[name], folder, message_format)
        except InvalidImage as exc:
            raise InvalidImage(f"Failed to load image for input {name!r}: {exc}") from exc
    return loaded


def serialise(value: Any, message_format: str = "basic") -> Any:
    """Images anywhere in a value as `{"data:image/<type>;base64": ...}` dicts (openai-vision:
    `{"type": "image_url", "image_url": {"url": "data:image/<type>;base64,..."}}`)."""
    if isinstance(value, PFBytes):
        if message_format == "openai-vision":
            return {"type": "image_url", "image_url": {"url": value.to_base64(with_type=True)}}
        return {f"data:{value._mime_type};base64": value.to_base64()}
    if isinstance(value, list | tuple):
        return [serialise(v, message_format) for v in value]
    if isinstance(value, dict):
        return {k: serialise(v, message_format) for k, v in value.items()}
    return value
