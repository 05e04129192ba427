"""The tutorial's scenario 3 exactly as pasted from its page: `flow.dag.yml` without the
`connection` node input (the portal adds it when the user picks the connection at "Validate
and parse input") and `integrate_with_promptflow.py` verbatim, run against an lmfoundry online
endpoint serving the bundled SmolLM2, its URL and key in a custom connection named
`connection`, as the tutorial's "Add a custom connection" step makes it:

- from the CLI, binding the connection with Prompt flow's `--connections`, or by default when
  it is the project's only connection of a fitting type (the CLI says so);
- as a batch run and a deployed flow, with pf's flags;
- in the studio (headless Chromium), after picking the connection on the flow's page.

The tutorial sends temperature 0.7, so the answers are sampled: each call is checked against
the endpoint's usage ledger (one more request, tokens generated), not against a fixed text.
"""

# ruff: noqa: E501 (the tutorial's code, verbatim, has a long comment line)

from __future__ import annotations

from pathlib import Path

SLOT = "integrate_with_promptflow.connection"  # the node input the portal's picker fills

# flow.dag.yml as the tutorial has it pasted in "Raw file mode".
TUTORIAL_DAG = """\
inputs:
  input_data:
    type: string
    default: "Who founded Microsoft?"

outputs:
  answer:
    type: string
    reference: ${integrate_with_promptflow.output}

nodes:
- name: integrate_with_promptflow
  type: python
  source:
    type: code
    path: integrate_with_promptflow.py
  inputs:
    input_data: ${inputs.input_data}
"""

# integrate_with_promptflow.py, verbatim.
TUTORIAL_CODE = '''\
import logging
import requests
from promptflow import tool
from promptflow.connections import CustomConnection

# Logging setup
logging.basicConfig(
    format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
    datefmt="%Y-%m-%d %H:%M:%S",
    level=logging.DEBUG
)
logger = logging.getLogger(__name__)

def query_phi3_model(input_data: str, connection: CustomConnection) -> str:
    """
    Send a request to the Phi-3 model endpoint with the given input data using Custom Connection.
    """

    # "connection" is the name of the Custom Connection, "endpoint", "key" are the keys in the Custom Connection
    endpoint_url = connection.endpoint
    api_key = connection.key

    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {api_key}"
    }
    data = {
        "input_data": {
            "input_string": [
                {"role": "user", "content": input_data}
            ],
            "parameters": {
                "temperature": 0.7,
                "max_new_tokens": 128
            }
        }
    }
    try:
        response = requests.post(endpoint_url, json=data, headers=headers)
        response.raise_for_status()

        # Log the full JSON response
        logger.debug(f"Full JSON response: {response.json()}")

        result = response.json()["output"]
        logger.info("Successfully received response from Azure ML Endpoint.")
        return result
    except requests.exceptions.RequestException as e:
        logger.error(f"Error querying Azure ML Endpoint: {e}")
        raise

@tool
def my_python_tool(input_data: str, connection: CustomConnection) -> str:
    """
    Tool function to process input data and query the Phi-3 model.
    """
    return query_phi3_model(input_data, connection)

'''


def write_tutorial(folder: Path) -> Path:
    """The tutorial's flow folder, its two files exactly as on the page."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.dag.yml").write_text(TUTORIAL_DAG, encoding="utf-8")
    (folder / "integrate_with_promptflow.py").write_text(TUTORIAL_CODE, encoding="utf-8")
    return folder
