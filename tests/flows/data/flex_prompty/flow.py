from pathlib import Path

from promptflow.core import AzureOpenAIModelConfiguration, Prompty

HERE = Path(__file__).parent


class ChatFlow:
    def __init__(self, model_config: AzureOpenAIModelConfiguration):
        self.model_config = model_config

    def __call__(self, question: str = "What is ChatGPT?", render: bool = False):
        prompty = Prompty.load(
            source=HERE / "ask.prompty", model={"configuration": self.model_config}
        )
        if render:
            return prompty.render(question=question)
        return prompty(question=question)
