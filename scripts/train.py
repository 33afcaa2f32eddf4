#!/usr/bin/env python3
"""npc-train: train a policy against frozen NPCs (Hydra overrides, see configs/config.yaml).

The same program as the installed console script; this file runs it from a source checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npc_wrapper.cli.train import main

if __name__ == "__main__":
    main()
