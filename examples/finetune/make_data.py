"""Write `chat.jsonl`: a small chat dataset in the shape of ultrachat_200k rows.

    python examples/finetune/make_data.py [OUT]

Every row has `prompt`, `prompt_id` and `messages`, like the rows the Azure tutorial's
download_dataset.py saves, so the same commands work on either. The assistant answers in one
fixed, terse style ("Country facts: ..."), which a model picks up within a few dozen LoRA
steps: the validation loss falls visibly on a CPU. Deterministic: the same file every time.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

# country, capital, currency, language
FACTS = [
    ("France", "Paris", "the euro", "French"),
    ("Germany", "Berlin", "the euro", "German"),
    ("Italy", "Rome", "the euro", "Italian"),
    ("Spain", "Madrid", "the euro", "Spanish"),
    ("Portugal", "Lisbon", "the euro", "Portuguese"),
    ("Japan", "Tokyo", "the yen", "Japanese"),
    ("China", "Beijing", "the renminbi", "Mandarin"),
    ("India", "New Delhi", "the rupee", "Hindi"),
    ("Brazil", "Brasilia", "the real", "Portuguese"),
    ("Mexico", "Mexico City", "the peso", "Spanish"),
    ("Canada", "Ottawa", "the Canadian dollar", "English"),
    ("Australia", "Canberra", "the Australian dollar", "English"),
    ("Egypt", "Cairo", "the Egyptian pound", "Arabic"),
    ("Kenya", "Nairobi", "the shilling", "Swahili"),
    ("Norway", "Oslo", "the krone", "Norwegian"),
    ("Sweden", "Stockholm", "the krona", "Swedish"),
    ("Poland", "Warsaw", "the zloty", "Polish"),
    ("Greece", "Athens", "the euro", "Greek"),
    ("Turkey", "Ankara", "the lira", "Turkish"),
    ("Korea", "Seoul", "the won", "Korean"),
    ("Thailand", "Bangkok", "the baht", "Thai"),
    ("Vietnam", "Hanoi", "the dong", "Vietnamese"),
    ("Peru", "Lima", "the sol", "Spanish"),
    ("Chile", "Santiago", "the Chilean peso", "Spanish"),
    ("Argentina", "Buenos Aires", "the Argentine peso", "Spanish"),
    ("Ireland", "Dublin", "the euro", "English"),
    ("Austria", "Vienna", "the euro", "German"),
    ("Hungary", "Budapest", "the forint", "Hungarian"),
    ("Finland", "Helsinki", "the euro", "Finnish"),
    ("Denmark", "Copenhagen", "the krone", "Danish"),
    ("Morocco", "Rabat", "the dirham", "Arabic"),
    ("Nigeria", "Abuja", "the naira", "English"),
    ("Indonesia", "Jakarta", "the rupiah", "Indonesian"),
    ("Russia", "Moscow", "the ruble", "Russian"),
    ("Ukraine", "Kyiv", "the hryvnia", "Ukrainian"),
    ("Czechia", "Prague", "the koruna", "Czech"),
    ("Iceland", "Reykjavik", "the krona", "Icelandic"),
    ("Cuba", "Havana", "the Cuban peso", "Spanish"),
    ("Colombia", "Bogota", "the Colombian peso", "Spanish"),
    ("Israel", "Jerusalem", "the shekel", "Hebrew"),
]

QUESTIONS = [
    ("capital", "What is the capital of {country}?"),
    ("capital", "Which city is the capital of {country}?"),
    ("currency", "What currency do they use in {country}?"),
    ("currency", "Which money should I bring to {country}?"),
    ("language", "What language do people speak in {country}?"),
    ("language", "Which language is spoken in {country}?"),
]

SYSTEM = "You are a concise travel assistant."


def answer(kind: str, country: str, capital: str, currency: str, language: str) -> str:
    value = {"capital": capital, "currency": currency, "language": language}[kind]
    return f"Country facts: the {kind} of {country} is {value}."


def rows(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out = []
    for country, capital, currency, language in FACTS:
        for _ in range(2):
            (kind, question), (kind2, question2) = rng.sample(QUESTIONS, 2)
            prompt = question.format(country=country)
            messages = [
                {"role": "user", "content": prompt},
                {
                    "role": "assistant",
                    "content": answer(kind, country, capital, currency, language),
                },
            ]
            if rng.random() < 0.5:  # some rows have a second turn
                messages += [
                    {"role": "user", "content": question2.format(country=country)},
                    {
                        "role": "assistant",
                        "content": answer(kind2, country, capital, currency, language),
                    },
                ]
            if rng.random() < 0.3:
                messages.insert(0, {"role": "system", "content": SYSTEM})
            prompt_id = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
            out.append({"prompt": prompt, "prompt_id": prompt_id, "messages": messages})
    rng.shuffle(out)
    return out


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "chat.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
