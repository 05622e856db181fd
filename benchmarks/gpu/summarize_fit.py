"""What a time-limited fit made: env steps, updates, throughput and its evaluations (reads its TensorBoard events)."""

from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import scalar  # noqa: E402


def main(root: str, seconds: float) -> None:
    runs = sorted({os.path.dirname(path) for path in glob.glob(os.path.join(root, "**", "events.out.tfevents.*"), recursive=True)})
    if not runs:
        print(f"no TensorBoard events under {root}: the fit did not start (see fit.log)")
        return
    run = runs[-1]
    steps = scalar(run, "train/episodes")  # logged at every collect, against env steps
    env_steps = max((step for step, _ in steps), default=0)
    print(f"run: {run}")
    print(f"env steps: {env_steps} in about {seconds:.0f} s ({env_steps / seconds * 60:,.0f} per minute, set-up and evaluation included)")
    for tag in ("eval/return_ratio", "eval/return"):
        values = scalar(run, tag)
        if values:
            print(f"{tag}: " + ", ".join(f"{value:.3f} at {step}" for step, value in values))
            break


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
