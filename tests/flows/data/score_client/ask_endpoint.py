import logging

import requests
from promptflow import tool
from promptflow.connections import CustomConnection

logger = logging.getLogger(__name__)


def query_endpoint(input_data: str, connection: CustomConnection) -> str:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {connection.key}"}
    data = {
        "input_data": {
            "input_string": [{"role": "user", "content": input_data}],
            "parameters": {"temperature": 0.0, "max_new_tokens": 24},
        }
    }
    response = requests.post(connection.endpoint, json=data, headers=headers, timeout=120)
    response.raise_for_status()
    logger.debug("full response: %s", response.json())
    return response.json()["output"]


@tool
def ask(input_data: str, connection: CustomConnection) -> str:
    return query_endpoint(input_data, connection)
