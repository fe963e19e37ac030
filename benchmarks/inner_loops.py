"""Throughput of the adder's inner-loop forms on this CPU's FP ports, against a conv's FMA.

A register-only C loop (compiled here with gcc; no memory traffic) runs 14 independent
accumulators through each form and prints nanoseconds per vector term (512-bit with
AVX-512, else 256-bit) and the ratio to ``fma``, the conv's term. The forms are those the
dense adder forward chooses among (``adderize.tvm_schedules.compute.FORMS``):

    abs     sub, and, add      |x - w| accumulated by adds
    fma     sub, and, fma      |x - w| * 1.0 accumulated by FMAs
    max     max, add           2 max(x, w) - x - w: max(x, w) accumulated by adds
    maxfma  max, fma           the same accumulated by FMAs

Which ports execute max, add and FMA decides the ranking (AMD Zen 4: max and add share two
ports, FMA has two others), so it is measured, not assumed.

    python benchmarks/inner_loops.py [--iters 20000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from adderize.tvm_schedules.target import cpu_isa, describe

FORMS = {  # name: (ops, accumulator update of acc[i] from x and w)
    "conv": ("fma", "acc[i] = FMA(x, w, acc[i]);"),
    "abs": ("sub, and, add", "acc[i] = ADD(acc[i], AND(SUB(x, w), m));"),
    "fma": ("sub, and, fma", "acc[i] = FMA(AND(SUB(x, w), m), one, acc[i]);"),
    "max": ("max, add", "acc[i] = ADD(acc[i], MAX(x, w));"),
    "maxfma": ("max, fma", "acc[i] = FMA(MAX(x, w), one, acc[i]);"),
}

_HEADER = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define N 14
#ifdef __AVX512F__
typedef __m512 V;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define MAX _mm512_max_ps
#define AND _mm512_and_ps
#define MASK _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff))
#define LANES 16
#else
typedef __m256 V;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define MAX _mm256_max_ps
#define AND _mm256_and_ps
#define MASK _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))
#define LANES 8
#endif
static float xs[N], sink;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
"""

_FORM = r"""
static double run_{name}(long iters) {{
    V acc[N], one = SET1(xs[1] + 1.0f), m = MASK, w = SET1(0.5f);
    for (int i = 0; i < N; i++) acc[i] = SET1(0.0f);
    double t = now();
    for (long it = 0; it < iters; it++) {{
        __asm__ volatile("" : "+x"(w));  /* w is new every iteration: no hoisting */
        _Pragma("GCC unroll 16") for (int i = 0; i < N; i++) {{
            V x = SET1(xs[i]);
            {update}
        }}
    }}
    t = now() - t;
    for (int i = 0; i < N; i++) {{  /* the sums are used: the loop is not dropped */
        float lanes[LANES];
        memcpy(lanes, &acc[i], sizeof lanes);
        sink += lanes[0];
    }}
    return t;
}}
"""

_MAIN = r"""
int main(int argc, char **argv) {{
    long iters = atol(argv[1]);
    for (int i = 0; i < N; i++) xs[i] = 0.001f * i;
    for (int round = 0; round < 3; round++) {{
{calls}
    }}
    return sink == 1.2345f;
}}
"""


def _source() -> str:
    forms = "".join(_FORM.format(name=n, update=u) for n, (_, u) in FORMS.items())
    calls = "\n".join(
        f'        printf("{n} %.6f\\n", run_{n}(iters) * 1e9 / ((double)iters * N));' for n in FORMS
    )
    return _HEADER + forms + _MAIN.format(calls=calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20_000_000)
    args = parser.parse_args()
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("needs a C compiler (gcc)")
    if "fma" not in cpu_isa():
        sys.exit("this CPU has no FMA instructions: the fma forms do not apply")
    wide = "avx512f" in cpu_isa()
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "loops.c"), Path(tmp, "loops")
        src.write_text(_source())
        subprocess.run([cc, "-O3", "-march=native", str(src), "-o", str(exe)], check=True)
        if hasattr(os, "sched_setaffinity"):  # one core, so the timings are that core's
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        out = subprocess.run([str(exe), str(args.iters)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    best: dict[str, float] = {}
    for line in out.split("\n"):
        if line:
            name, ns = line.split()
            best[name] = min(best.get(name, float("inf")), float(ns))
    print(describe())
    bits = 512 if wide else 256
    print(f"register-only loop, 14 accumulators, {bits}-bit vectors, best of 3 rounds")
    print(f"{'form':8s} {'ops':14s} {'ns/term':>8s} {'vs conv':>8s}")
    for name, (ops, _) in FORMS.items():
        print(f"{name:8s} {ops:14s} {best[name]:8.3f} {best[name] / best['conv']:7.2f}x")


if __name__ == "__main__":
    main()
