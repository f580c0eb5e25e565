"""Where ``prefcurate route``'s CPU time goes, from a ``perf`` profile of one run.

Runs ``perf record`` (199 samples per second, call chains) on ``prefcurate route FILE --threshold
0.5``, then puts each sample in the first group whose rule matches its call chain: the output's
zstd compression, the input's decompression, page faults on fresh memory, file writes and reads,
copies, the input's SHA-256 (plan.json's identity), the pair_id hash, Python (imports, plots,
glue), the rest (Polars' encoding and decoding, Arrow). Linux with ``perf`` only. Run from the
repository root::

    python benchmarks/route_profile.py synth-1000000.parquet --json route_profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parent.parent
HZ = 199
#: Group name → call-chain fragments (symbols or libraries); the first group that matches wins.
GROUPS = {
    "output: zstd compression": ("ZSTD_compress", "ZSTD_encode", "HUF_compress", "HIST_count"),
    "input: zstd decompression": ("ZSTD_decompress", "HUF_decompress"),
    "input: SHA-256 (plan.json)": ("sha256", "libcrypto"),
    "pair_id: xxh3": ("xxh3", "xxhash"),
    "madvise (the spill's pages, allocators)": ("madvise",),
    "file writes (the spill, the output)": ("ksys_write", "__libc_write", "vfs_write"),
    "file reads": ("ksys_read", "vfs_read", "__libc_pread", "filemap_read"),
    "page faults (fresh memory)": ("exc_page_fault",),
    "copies (memcpy)": ("memmove", "memcpy"),
    "Python (imports, plots, glue)": ("libpython", "ft2font"),
}
OTHER = "the rest (Polars encode/decode, Arrow, kernel)"


def record(data: Path, out: Path, perf_data: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    argv = ["perf", "record", "-F", str(HZ), "-g", "-o", str(perf_data), "--",
            sys.executable, "-m", "prefcurate", "route", str(data), "--threshold", "0.5",
            "--out", str(out), "--force"]  # fmt: skip
    subprocess.run(argv, env=env, check=True, capture_output=True)


def samples(perf_data: Path) -> list[str]:
    """Each sample's call chain as one string (symbols and libraries, innermost first)."""
    script = ["perf", "script", "-i", str(perf_data), "-F", "comm,tid,ip,sym,dso"]
    text = subprocess.run(script, check=True, capture_output=True, text=True).stdout
    return [" ".join(block.split("\n")[1:]) for block in text.split("\n\n") if block.strip()]


def grouped(chains: list[str]) -> dict[str, float]:
    """CPU seconds per group."""
    counts: collections.Counter[str] = collections.Counter()
    for chain in chains:
        group = next((g for g, keys in GROUPS.items() if any(k in chain for k in keys)), OTHER)
        counts[group] += 1
    return {group: n / HZ for group, n in counts.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="route-profile-") as tmp:
        perf_data = Path(tmp) / "perf.data"
        record(args.data, Path(tmp) / "split", perf_data)
        groups = grouped(samples(perf_data))
    total = sum(groups.values())
    print("| group | CPU s | share |\n|---|---|---|")
    for group, seconds in groups.items():
        print(f"| {group} | {seconds:.1f} | {seconds / total:.0%} |")
    print(f"| total (sampled at {HZ} Hz) | {total:.1f} | 100% |")
    if args.json:
        figures = {"groups_cpu_s": groups, "total_cpu_s": total, "load_average_at_start": load,
                   "machine": describe()}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
