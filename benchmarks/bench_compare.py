"""What `dissect compare` costs beside the one product its correlations need, the ratio from one run.

    python benchmarks/bench_compare.py            # N = 50,000 images, 2,048 x 2,048 units (issue #27)
    python benchmarks/bench_compare.py --smoke    # seconds

B is A's units permuted, each with its own noise (a fine-tuned checkpoint's shape). Timed in this process, best of
``--repeat``, on the same arrays:

* product: Xᵀ Y of the two whole layers in memory, float32 (one GEMM: the issue's yardstick);
* correlate: the streamed sums compare keeps (float32 block products into float64, the Gram matrices of CKA),
  from in-memory blocks;
* compare: the whole library call from the two activations files (HDF5 reads, correlations, CKA, best matches,
  the one-to-one matching), with and without CKA, and the matching alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    import torch

    from dissect import artifacts as A
    from dissect.compare import CompareSettings, compare, open_side
    from dissect.correlate import CrossMoments, assignment
    from dissect.runtime import set_quiet

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--units", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n, c, repeat = (2000, 128, 1) if args.smoke else (args.images, args.units, args.repeat)
    set_quiet(True)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(n, c)), 0).astype(np.float32)
    perm = rng.permutation(c)
    y = (x[:, perm] * rng.uniform(0.5, 2, size=c) + 0.5 * rng.normal(size=(n, c))).astype(np.float32)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    product = best_of(repeat, lambda: tx.T @ ty)

    def streamed():
        cm = CrossMoments(c, c, gram=True)
        for s in range(0, n, 4096):
            cm.update(tx[s : s + 4096], ty[s : s + 4096])
        return cm.correlation(), cm.cka()

    correlate = best_of(repeat, streamed)
    r, _ = streamed()

    def streamed_no_cka():
        cm = CrossMoments(c, c, gram=False)
        for s in range(0, n, 4096):
            cm.update(tx[s : s + 4096], ty[s : s + 4096])
        return cm.correlation()

    no_cka = best_of(repeat, streamed_no_cka)
    matching = best_of(repeat, lambda: assignment(r.numpy()))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ids = [f"img{i:06d}.png" for i in range(n)]
        for name, arr in (("a", x), ("b", y)):
            A.write_activations(d / f"{name}.h5", ids, {"layer": arr}, {"layer": {"layout": "nc"}},
                                {"model": f"bench:{name}"})
        settings = CompareSettings(max_memory=1 << 30, device="cpu")
        whole = best_of(repeat, lambda: compare(open_side("A", d / "a.h5"), open_side("B", d / "b.h5"), settings))
        plain = CompareSettings(max_memory=1 << 30, device="cpu", cka=False)
        whole_no_cka = best_of(repeat, lambda: compare(open_side("A", d / "a.h5"), open_side("B", d / "b.h5"), plain))
        got = compare(open_side("A", d / "a.h5"), open_side("B", d / "b.h5"), settings)
    recovered = np.mean(np.array(got.rows["unit_b"][:c]) == np.argsort(perm))
    print(f"N = {n:,} images, {c:,} x {c:,} units, {torch.get_num_threads()} threads (best of {repeat}); ratio: x the product")
    print(f"product XᵀY float32 (in memory)     {product:8.2f} s   x1.00")
    print(f"correlate: sums + CKA Gram matrices {correlate:8.2f} s   x{correlate / product:.2f}")
    print(f"correlate: sums, no CKA             {no_cka:8.2f} s   x{no_cka / product:.2f}")
    print(f"matching (one-to-one, {c} x {c})    {matching:8.2f} s")
    print(f"compare, from the two .h5 files      {whole:8.2f} s   x{whole / product:.2f}")
    print(f"compare --no-cka, from the files     {whole_no_cka:8.2f} s   x{whole_no_cka / product:.2f}")
    print(f"permutation recovered: {recovered:.0%}")


if __name__ == "__main__":
    main()
