"""Output serialisation as Prompt flow's: generator and async generator outputs joined, NaN
and Infinity kept, nested values as they are."""

from __future__ import annotations

import math
from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow


def test_generator_async_generator_and_non_finite_outputs(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          text: {type: string}
        outputs:
          words: {type: string, reference: "${words.output}"}
          async_words: {type: string, reference: "${async_words.output}"}
          upper: {type: string, reference: "${upper.output}"}
          numbers: {type: object, reference: "${numbers.output}"}
          awaited: {type: string, reference: "${awaited.output}"}
        nodes:
        - name: words
          type: python
          source: {type: code, path: words.py}
          inputs: {text: "${inputs.text}"}
        - name: async_words
          type: python
          source: {type: code, path: async_words.py}
          inputs: {text: "${inputs.text}"}
        - name: upper
          type: python
          source: {type: code, path: upper.py}
          inputs: {text: "${words.output}"}
        - name: numbers
          type: python
          source: {type: code, path: numbers.py}
          inputs: {}
        - name: awaited
          type: python
          source: {type: code, path: awaited.py}
          inputs: {text: "${inputs.text}"}
        """,
        {
            "words.py": """
            from promptflow.core import tool


            @tool
            def words(text: str):
                for word in text.split():
                    yield word + " "
            """,
            "async_words.py": """
            import asyncio

            from promptflow.core import tool


            @tool
            async def async_words(text: str):
                for word in text.split():
                    await asyncio.sleep(0)
                    yield word.upper()
            """,
            "upper.py": """
            from promptflow.core import tool


            @tool
            def upper(text) -> str:
                # Prompt flow hands on the generator itself; joining it consumes it
                return f"{type(text).__name__}:{''.join(text).upper()}"
            """,
            "numbers.py": """
            from promptflow.core import tool


            @tool
            def numbers() -> dict:
                return {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"),
                        "nested": [1, 2.5, None, True]}
            """,
            "awaited.py": """
            import asyncio

            from promptflow.core import tool


            @tool
            async def awaited(text: str) -> str:
                await asyncio.sleep(0)
                return text[::-1]
            """,
        },
    )
    (lmf,) = both(flow, [{"text": "a b c"}])
    (out,) = outputs(lmf)
    assert out["words"] == ""  # `upper` consumed it
    assert out["async_words"] == "ABC"
    assert out["upper"] == "generator:A B C "
    assert out["awaited"] == "c b a"
    assert math.isnan(out["numbers"]["nan"])
    assert out["numbers"]["inf"] == math.inf and out["numbers"]["-inf"] == -math.inf
    assert out["numbers"]["nested"] == [1, 2.5, None, True]
