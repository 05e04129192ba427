import hashlib
import logging

from promptflow import tool
from promptflow.connections import CustomConnection

logging.basicConfig(level=logging.DEBUG)
logger = logging.getLogger("careless")


@tool
def careless(fail: bool, connection: CustomConnection) -> dict:
    print("the key is", connection.key, "and the connection is", connection)
    logger.warning("calling %s with key %s", connection.endpoint, connection.key)
    if fail:
        raise RuntimeError(f"refused key {connection.key}")
    return {
        "shown": f"key={connection.key} secrets={connection.secrets}",
        "sha256": hashlib.sha256(connection.key.encode()).hexdigest(),
    }
