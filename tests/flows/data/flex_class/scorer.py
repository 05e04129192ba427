import asyncio
from typing import TypedDict

from promptflow.connections import CustomConnection


class Scored(TypedDict):
    word: str
    score: int
    region: str


class Scorer:
    def __init__(self, unit: str, conn: CustomConnection, bonus: int = 0):
        self.unit = unit
        self.region = conn.configs["region"]
        self.bonus = bonus

    async def __call__(self, word: str) -> Scored:
        await asyncio.sleep(0)
        score = len(word) + self.bonus
        return {"word": f"{word} {self.unit}", "score": score, "region": self.region}

    def __aggregate__(self, results: list) -> dict:
        return {"lines": len(results), "total": sum(r.score for r in results)}
