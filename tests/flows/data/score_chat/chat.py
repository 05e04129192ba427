import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool


@tool
def chat(question: str, chat_history: list, connection: CustomConnection) -> str:
    messages = []
    for turn in chat_history:
        messages.append({"role": "user", "content": turn["inputs"]["question"]})
        messages.append({"role": "assistant", "content": turn["outputs"]["answer"]})
    messages.append({"role": "user", "content": question})
    body = {
        "input_data": {
            "input_string": messages,
            "parameters": {"temperature": 0.0, "max_new_tokens": 24},
        }
    }
    headers = {"Authorization": f"Bearer {connection.key}"}
    response = requests.post(connection.endpoint, json=body, headers=headers, timeout=120)
    response.raise_for_status()
    return response.json()["output"]
