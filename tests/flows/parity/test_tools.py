"""Tool loading as Prompt flow does it: class tools with __init__ arguments, the module run
as `__pf_main__` with `__file__` set, the flow's own modules importable from a subfolder's
tool, additional_includes, and literal inputs converted to the parameter's type."""

from __future__ import annotations

from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow


def test_a_class_tool_with_init_arguments(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          text: {type: string}
        outputs:
          out: {type: string, reference: "${repeat.output}"}
        nodes:
        - name: repeat
          type: python
          source: {type: code, path: repeat.py}
          inputs: {times: "3", separator: "-", text: "${inputs.text}"}
        """,
        {
            "repeat.py": """
            from promptflow.core import ToolProvider, tool


            class Repeat(ToolProvider):
                def __init__(self, times: int, separator: str = " "):
                    super().__init__()
                    self.times = times
                    self.separator = separator

                @tool
                def repeat(self, text: str) -> str:
                    return self.separator.join([text] * self.times)
            """
        },
    )
    (lmf,) = both(flow, [{"text": "ab"}])
    assert outputs(lmf) == [{"out": "ab-ab-ab"}]


def test_pf_main_file_and_the_flows_own_modules(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs: {}
        outputs:
          out: {type: object, reference: "${where.output}"}
        nodes:
        - name: where
          type: python
          source: {type: code, path: tools/where.py}
          inputs: {}
        """,
    )
    (flow / "tools").mkdir()
    (flow / "tools" / "helpers.py").write_text("def shout(text):\n    return text.upper()\n")
    (flow / "common.py").write_text("PREFIX = 'common'\n")
    (flow / "tools" / "data.txt").write_text("beside the tool\n")
    (flow / "tools" / "where.py").write_text(
        "from pathlib import Path\n\n"
        "from common import PREFIX\n"
        "from promptflow.core import tool\n"
        "from tools.helpers import shout\n\n"
        "RAN_AS_MAIN = __name__ == '__main__'\n\n\n"
        "@tool\n"
        "def where() -> dict:\n"
        "    here = Path(__file__)\n"
        "    return {'name': __name__, 'file': here.name, 'main': RAN_AS_MAIN,\n"
        "            'data': (here.parent / 'data.txt').read_text().strip(),\n"
        "            'imports': shout(PREFIX)}\n"
    )
    (lmf,) = both(flow, [{}])
    assert outputs(lmf) == [
        {
            "out": {
                "name": "__pf_main__",
                "file": "where.py",
                "main": False,
                "data": "beside the tool",
                "imports": "COMMON",
            }
        }
    ]


def test_additional_includes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "greet.py").write_text(
        "from promptflow.core import tool\n\n\n@tool\ndef greet(name: str) -> str:\n"
        "    return 'hello ' + name\n"
    )
    (shared / "words").mkdir()
    (shared / "words" / "suffix.txt").write_text("!")
    flow = write_flow(
        tmp_path / "f",
        """
        additional_includes:
        - ../shared/greet.py
        - ../shared/words
        inputs:
          name: {type: string}
        outputs:
          out: {type: string, reference: "${greet.output}"}
          suffix: {type: string, reference: "${suffix.output}"}
        nodes:
        - name: greet
          type: python
          source: {type: code, path: greet.py}
          inputs: {name: "${inputs.name}"}
        - name: suffix
          type: python
          source: {type: code, path: suffix.py}
          inputs: {}
        """,
        {
            "suffix.py": """
            from pathlib import Path

            from promptflow.core import tool


            @tool
            def suffix() -> str:
                return (Path(__file__).parent / "words" / "suffix.txt").read_text()
            """
        },
    )
    (lmf,) = both(flow, [{"name": "ada"}])
    assert outputs(lmf) == [{"out": "hello ada", "suffix": "!"}]


def test_literal_inputs_take_the_parameters_types(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs: {}
        outputs:
          out: {type: object, reference: "${types.output}"}
        nodes:
        - name: types
          type: python
          source: {type: code, path: types_of.py}
          inputs:
            count: "7"
            ratio: 2
            flag: "True"
            items: '[1, 2]'
            text: 5
            loose: '{"a": 1}'
            plain: just text
            empty: ""
            nothing: null
        """,
        {
            "types_of.py": """
            from promptflow.core import tool


            @tool
            def types_of(count: int, ratio: float, flag: bool, items: list, text: str,
                         loose, plain, empty: str = "default", nothing: int = 9) -> dict:
                values = [count, ratio, flag, items, text, loose, plain, empty, nothing]
                return {"values": values, "types": [type(v).__name__ for v in values]}
            """
        },
    )
    (lmf,) = both(flow, [{}])
    assert outputs(lmf)[0]["out"]["types"] == [
        "int", "float", "bool", "list", "str", "dict", "str", "str", "int",
    ]  # fmt: skip
