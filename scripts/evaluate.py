#!/usr/bin/env python3
"""npc-eval: play a trained policy against an NPC and print the win rate with a 95% CI.

The same program as the installed console script; this file runs it from a source checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npc_wrapper.cli.evaluate import main

if __name__ == "__main__":
    main()
