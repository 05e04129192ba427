"""Images as Prompt flow has them: `image` inputs as path and base64 dicts, images nested in
list and object inputs, literal image inputs of a tool annotated `Image`, and image outputs
serialised as `{"data:image/png;base64": ...}`; a bad image fails the line in both."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import pytest

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow


def tiny_png(red: int) -> bytes:
    """A 1x1 RGB PNG of the given red value, made here (no file checked in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, red, 0, 0]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _flow(folder: Path) -> Path:
    flow = write_flow(
        folder,
        """
        inputs:
          image: {type: image}
          images: {type: list}
        outputs:
          picked: {type: image, reference: "${pick.output}"}
          size: {type: int, reference: "${size.output}"}
          nested: {type: object, reference: "${nested.output}"}
        nodes:
        - name: pick
          type: python
          source: {type: code, path: pick.py}
          inputs: {first: "${inputs.image}", second: b.png}
        - name: size
          type: python
          source: {type: code, path: size.py}
          inputs: {image: "${pick.output}"}
        - name: nested
          type: python
          source: {type: code, path: nested.py}
          inputs: {images: "${inputs.images}"}
        """,
        {
            "pick.py": """
            from promptflow import tool
            from promptflow.contracts.multimedia import Image


            @tool
            def pick(first: Image, second: Image) -> Image:
                assert isinstance(first, Image) and isinstance(second, Image)
                return first if first[:4] == b"\\x89PNG" and len(first) > 0 else second
            """,
            "size.py": """
            from promptflow import tool
            from promptflow.contracts.multimedia import Image


            @tool
            def size(image: Image) -> int:
                return len(bytes(image)) if isinstance(image, bytes) else -1
            """,
            "nested.py": """
            from promptflow import tool
            from promptflow.contracts.multimedia import Image


            @tool
            def nested(images: list) -> dict:
                return {"count": len(images), "kinds": [type(i).__name__ for i in images],
                        "last": images[-1]}
            """,
        },
    )
    (flow / "a.png").write_bytes(tiny_png(200))
    (flow / "b.png").write_bytes(tiny_png(10))
    return flow


def test_image_inputs_nested_images_and_image_outputs(tmp_path: Path) -> None:
    flow = _flow(tmp_path / "f")
    encoded = base64.b64encode(tiny_png(90)).decode()
    lines = [
        {
            "image": {"data:image/png;path": "a.png"},
            "images": [{"data:image/png;path": "b.png"}, {"data:image/png;base64": encoded}],
        },
        {"image": {"data:image/png;base64": encoded}, "images": [{"data:image/png;path": "a.png"}]},
    ]
    [answer] = both(flow, lines)
    first, second = outputs(answer)
    assert first["picked"] == {"data:image/png;base64": base64.b64encode(tiny_png(200)).decode()}
    assert first["size"] == len(tiny_png(200))
    assert first["nested"]["kinds"] == ["Image", "Image"]
    assert first["nested"]["last"] == {"data:image/png;base64": encoded}
    assert second["picked"] == {"data:image/png;base64": encoded}


def test_bad_base64_and_missing_file_fail_the_line(tmp_path: Path) -> None:
    flow = _flow(tmp_path / "f")
    lines = [
        {"image": {"data:image/png;base64": "not base64 at all!"}, "images": []},
        {"image": {"data:image/png;path": "missing.png"}, "images": []},
    ]
    [answer] = both(flow, lines)
    assert [line["status"] for line in answer["lines"]] == ["failed", "failed"]
    assert "base64" in answer["lines"][0]["error"]["message"]


def test_an_empty_image_default_loads_and_fails_only_the_lines_that_use_it(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "d",
        """
        inputs:
          image: {type: image, default: ""}
        outputs:
          size: {type: int, reference: "${size.output}"}
        nodes:
        - name: size
          type: python
          source: {type: code, path: size.py}
          inputs: {image: "${inputs.image}"}
        """,
        {
            "size.py": """
            from promptflow import tool
            from promptflow.contracts.multimedia import Image


            @tool
            def size(image: Image) -> int:
                return len(bytes(image))
            """,
        },
    )
    (flow / "a.png").write_bytes(tiny_png(3))
    [answer] = both(flow, [{}, {"image": {"data:image/png;path": "a.png"}}])
    assert [line["status"] for line in answer["lines"]] == ["failed", "completed"]
    assert "should not be empty" in answer["lines"][0]["error"]["message"]
    assert answer["lines"][1]["outputs"] == {"size": len(tiny_png(3))}


def test_openai_vision_message_format(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "v",
        """
        message_format: openai-vision
        inputs:
          image: {type: image}
          question: {type: list}
        outputs:
          picked: {type: image, reference: "${pick.output}", is_chat_output: true}
        nodes:
        - name: pick
          type: python
          source: {type: code, path: pick.py}
          inputs: {image: "${inputs.image}", question: "${inputs.question}"}
        """,
        {
            "pick.py": """
            from promptflow import tool
            from promptflow.contracts.multimedia import Image


            @tool
            def pick(image: Image, question: list) -> list:
                return [image] + [q for q in question if isinstance(q, Image)]
            """,
        },
    )
    (flow / "a.png").write_bytes(tiny_png(7))
    url = "data:image/png;base64," + base64.b64encode(tiny_png(70)).decode()
    line = {
        "image": {"type": "image_file", "image_file": {"path": "a.png"}},
        "question": ["what is it?", {"type": "image_url", "image_url": {"url": url}}],
    }
    [answer] = both(flow, [line])
    [result] = outputs(answer)
    assert result["picked"][1] == {"type": "image_url", "image_url": {"url": url}}


def test_tenant_images_are_capped_and_kept_in_the_flow_folder(tmp_path: Path) -> None:
    from lmfoundry.flows import images

    (tmp_path / "big.png").write_bytes(tiny_png(1) + b"0" * images.MAX_IMAGE_BYTES)
    cases = {
        "20 MiB": {"data:image/png;path": "big.png"},
        "base64": {"data:image/png;base64": "%%%"},
        "without network": {"data:image/png;url": "http://example.com/a.png"},
        "outside the flow folder": {"data:image/png;path": "../a.png"},
    }
    for message, value in cases.items():
        with pytest.raises(images.InvalidImage, match=message):
            images.create_image(value, tmp_path)


def test_image_dicts_in_list_and_object_literals_are_images(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "l",
        """
        inputs: {}
        outputs:
          kinds: {type: object, reference: "${kinds.output}"}
        nodes:
        - name: kinds
          type: python
          source: {type: code, path: kinds.py}
          inputs:
            many: [{"data:image/png;path": a.png}, 7]
            named: {first: {"data:image/png;path": a.png}}
        """,
        {
            "kinds.py": """
            from promptflow import tool


            @tool
            def kinds(many: list, named: dict) -> dict:
                return {"many": [type(v).__name__ for v in many],
                        "named": type(named["first"]).__name__}
            """,
        },
    )
    (flow / "a.png").write_bytes(tiny_png(5))
    [answer] = both(flow, [{}])
    assert outputs(answer) == [{"kinds": {"many": ["Image", "int"], "named": "Image"}}]
