"""The CPU's fp32 peak, measured: an FMA-throughput kernel run on every core at once.

A nominal peak (cores x clock x FLOP/cycle) needs the clock the cores really run at and how many FMA
units sit behind each vector width (AVX-512 on 256-bit units counts half), which a VM does not say. So
the bench measures it: a C loop of independent fused multiply-adds on the widest vectors the CPU has
(AVX-512 or AVX2), compiled here with ``-march=native``, one process per core, all at once. Nothing
real runs faster than this number; a large SGEMM reaches ~90% of it.

    python -m fashiongen.bench.cpu_peak          # prints GFLOP/s (needs a C compiler: cc / gcc)
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# ACC independent accumulators hide the FMA latency (4-5 cycles x 2 units); WIDTH floats per vector.
KERNEL = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef float vec __attribute__((vector_size(WIDTH * 4)));
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    vec m, c, acc[ACC];
    for (int j = 0; j < WIDTH; j++) { m[j] = 0.999999f; c[j] = 1e-7f; }
    for (int i = 0; i < ACC; i++) for (int j = 0; j < WIDTH; j++) acc[i][j] = (float)(i + j);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < iters; n++) {
        #pragma GCC unroll 64
        for (int i = 0; i < ACC; i++) acc[i] = acc[i] * m + c;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    float sink = 0;
    for (int i = 0; i < ACC; i++) for (int j = 0; j < WIDTH; j++) sink += acc[i][j];
    double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    printf("%.6f %g\n", 2.0 * iters * ACC * WIDTH / s / 1e9, (double)sink);
    return 0;
}
"""


def _vector_shape() -> tuple[int, int]:
    """(floats per vector, accumulators): 16 x 24 on AVX-512 (32 registers), 8 x 12 on AVX2 (16)."""
    from fashiongen.runtime.cpu import cpu_flags

    return (16, 24) if " avx512f" in cpu_flags() else (8, 12)


def measure_peak_gflops(cores: int | None = None, seconds: float = 2.0) -> float | None:
    """fp32 GFLOP/s of all ``cores`` together (default: every core), or None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    cores = cores or os.cpu_count() or 1
    width, acc = _vector_shape()
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(KERNEL)
        subprocess.run([compiler, "-O2", "-march=native", f"-DWIDTH={width}", f"-DACC={acc}", "-o", str(exe),
                        str(src)], check=True, capture_output=True)
        probe = float(subprocess.run([str(exe), "10000000"], capture_output=True, text=True,
                                     check=True).stdout.split()[0])
        iters = str(int(seconds * probe * 1e9 / (2 * acc * width)))  # ~``seconds`` per run
        best = 0.0
        for _ in range(3):  # best of 3: the machine is shared, a slow run is somebody else's load
            procs = [subprocess.Popen([str(exe), iters], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
            best = max(best, sum(float(p.communicate()[0].split()[0]) for p in procs))
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=None, help="processes run at once (default: every core)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed run (default 2)")
    args = parser.parse_args(argv)
    peak = measure_peak_gflops(args.cores, args.seconds)
    if peak is None:
        sys.exit("no C compiler (cc / gcc) found: pass the peak by hand (cpu_compare --peak-gflops)")
    print(f"{peak:.1f} GFLOP/s fp32 on {args.cores or os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
