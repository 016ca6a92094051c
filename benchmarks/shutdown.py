"""Shutdown of a torch job: the interpreter's exit with torch and the model class loaded, plain and
after `gc.freeze()` (what `bsn`, `cli.console_main`, does after its command).

Each child imports torch and a transformers model class, then exits; the baseline child exits
plainly, the other calls `gc.freeze()` first. The two run in turns, `--repeats` times each, and the
medians print: the time from the imports' end to the process's end (the shutdown), the whole
process (wall, and CPU user + system of the child), and the ratio frozen / plain.

    python benchmarks/shutdown.py                      # GPTNeoXForCausalLM, 7 repeats
    python benchmarks/shutdown.py --model-class GPT2LMHeadModel --repeats 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = (
    "import gc, sys, time\n"
    "import torch\n"
    "import transformers\n"
    "getattr(transformers, sys.argv[1])\n"
    "if sys.argv[2] == 'freeze':\n"
    "    gc.freeze()\n"
    "print(time.time(), flush=True)\n"
)


def run_child(model_class: str, mode: str) -> tuple[float, float, float]:
    """(shutdown s, whole process wall s, child CPU s) of one child."""
    before = os.times()
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, model_class, mode], capture_output=True, text=True, check=True
    )
    ended = time.time()
    after = os.times()
    imported = float(result.stdout.split()[-1])
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return ended - imported, ended - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-class", default="GPTNeoXForCausalLM")
    parser.add_argument("--repeats", type=int, default=7, help="Runs of each child (median).")
    options = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "freeze": []}
    for _ in range(options.repeats):
        for mode in runs:
            runs[mode].append(run_child(options.model_class, mode))
    medians = {
        mode: [statistics.median(r[i] for r in rows) for i in range(3)]
        for mode, rows in runs.items()
    }
    print(f"\n{options.model_class}, median of {options.repeats} (seconds)")
    print(f"  {'exit':8s}{'shutdown':>10s}{'process':>10s}{'cpu':>8s}")
    for mode, (shutdown, whole, cpu) in medians.items():
        print(f"  {mode:8s}{shutdown:10.2f}{whole:10.2f}{cpu:8.2f}")
    plain, frozen = medians["plain"], medians["freeze"]
    print(
        f"\nfreeze / plain: shutdown {frozen[0] / plain[0]:.2f}x, process "
        f"{frozen[1] / plain[1]:.2f}x, CPU {frozen[2] / plain[2]:.2f}x "
        f"({plain[2] - frozen[2]:+.2f} CPU s saved a job)"
    )


if __name__ == "__main__":
    main()
