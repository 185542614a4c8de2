"""`make bench`: run every benchmark in order; each rewrites its section of BENCHMARKS.md.

    python benchmarks/run.py              # everything (hours on 2 cores: it trains models)
    python benchmarks/run.py train mcu    # some of them

Later benchmarks reuse the checkpoints the training benchmark leaves in build/bench/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = {
    # leaves build/bench/{mnist-2kb,mnist,mnist-mcu,fashion,mlp}.pt
    "train": ["bench_train.py"],
    "train-early-exit-reg": ["train_early_exit_reg.py"],  # build/bench/mnist-mcu-reg*.pt
    "agreement": ["bench_agreement.py", "--model", "build/bench/mnist-2kb.pt"],
    "host": ["bench_host.py", "--model", "build/bench/mnist.pt", "--write"],
    "memory": ["bench_memory.py"],
    "mcu": ["bench_mcu.py", "--model", "build/bench/mnist-mcu.pt", "--images", "10000"],
    # trains build/bench/mnist-ch32v003-s{0,1,2}.pt (about a minute each) if missing
    "riscv": ["bench_riscv.py", "--images", "10000"],
    "early-exit": ["bench_early_exit.py", "--model", "build/bench/mnist-mcu.pt",
                   "--regularised", "0.5=build/bench/mnist-mcu-reg0.5.pt",
                   "--regularised", "1.5=build/bench/mnist-mcu-reg1.5.pt",
                   "--regularised", "3=build/bench/mnist-mcu-reg3.pt"],
    "early-exit-auto": ["bench_early_exit_auto.py", "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                        "--model", "mnist-2kb=build/bench/mnist-2kb.pt"],
    "search": ["bench_search.py"],
    # issue #15: trains build/accuracy/<goal>-<variant>-s<seed>.pt (hours on 2 cores) if missing
    "accuracy": ["bench_accuracy.py", "--images", "100"],
    "search-estimate": ["bench_search_estimate.py"],  # reads the accuracy checkpoints
    # issue #17: trains build/sensors/<set>-{binary,float}-s<seed>.pt (minutes) if missing
    "sensors": ["bench_sensors.py"],
    "distributed": ["bench_distributed.py"],
    "fast": ["bench_fast.py", "--write"],  # reads build/bench/mnist-mcu.pt if present
    # issue #11: build/bench/mnist-mcu-v{EPS}r{REG}s{SEED}.pt, then verification
    "train-verify-reg": ["train_verify_reg.py"],
    "verify-mcu-eps1": ["bench_verify.py", "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                        "--images", "1000", "--eps", "1", "--timeout", "60",
                        "--section", "verify-robust-mcu-eps1"],
    "verify-mcu-large-eps": ["bench_verify.py", "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                             "--images", "100", "--eps", "2,4,8", "--timeout", "10",
                             "--section", "verify-robust-mcu-large-eps"],
    "verify-training": ["bench_verify.py",
                        "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                        "--model", "verify-eps2-reg0.3=build/bench/mnist-mcu-v2r0.3s0.pt",
                        "--model", "verify-eps2-reg1=build/bench/mnist-mcu-v2r1s0.pt",
                        "--model", "verify-eps4-reg1=build/bench/mnist-mcu-v4r1s0.pt",
                        "--images", "100", "--eps", "2,4,8", "--timeout", "10",
                        "--section", "verify-training"],
    "verify-knob": ["bench_verify.py", "--model",
                    "mnist-mcu-verify-eps2-reg1=build/bench/mnist-mcu-v2r1s0.pt",
                    "--images", "1000", "--eps", "1,2,4", "--timeout", "60",
                    "--section", "verify-robust-knob"],
    "verify-2kb": ["bench_verify.py", "--model", "mnist-2kb=build/bench/mnist-2kb.pt",
                   "--images", "16", "--eps", "1", "--timeout", "60",
                   "--section", "verify-robust-2kb"],
    "verify-solvers": ["bench_verify.py", "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                       "--part", "solvers", "--images", "200", "--eps", "1",
                       "--solver-images", "15", "--timeout", "60"],
    "verify-exact": ["bench_verify.py", "--model", "mnist-mcu=build/bench/mnist-mcu.pt",
                     "--part", "exact", "--images", "10000"],
}


def main(names: list[str]) -> int:
    failed = []
    for name in names or list(ORDER):
        script, *args = ORDER[name]
        start = time.perf_counter()
        print(f"== {name}: python benchmarks/{script} {' '.join(args)}", flush=True)
        rc = subprocess.run([sys.executable, str(HERE / script), *args],
                            cwd=HERE.parent).returncode
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
