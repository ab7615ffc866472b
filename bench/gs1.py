"""Benchmark of GS1 parsing: element strings, scan data, HRI and Digital Links, mixed.

Builds a corpus of distinct, valid inputs (random GTINs, lots, serials and expiry dates, each in
one of six forms) and parses it whole several times; reports the best pass, by the process's CPU
time (one core; other work on a shared machine does not count) and by the wall clock.
Prints one JSON line last: {"gs1_parse_per_s": ..., "gs1_parse_per_s_wall": ..., "inputs": ...,
"forms": {...}}.
Run: python bench/gs1.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldchain.gs1 import gtin_check_digit, parse

_LOT_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-/."


def corpus(n: int, seed: int = 13) -> tuple[list[str], Counter[str]]:
    rng = random.Random(seed)
    forms: Counter[str] = Counter()
    out: list[str] = []
    for _ in range(n):
        body = "0" + "".join(rng.choice("0123456789") for _ in range(12))
        gtin = body + str(gtin_check_digit(body))
        lot = "".join(rng.choice(_LOT_CHARS) for _ in range(rng.randint(3, 12)))
        serial = "".join(rng.choice(_LOT_CHARS) for _ in range(rng.randint(4, 16)))
        expiry = (date(2026, 1, 1) + timedelta(days=rng.randint(0, 1500))).strftime("%y%m%d")
        form = rng.choice(["digital_link", "digital_link", "datamatrix", "element_string", "hri", "gs1_128"])
        forms[form] += 1
        if form == "digital_link":
            out.append(
                f"https://id.gs1.org/01/{gtin}/10/{quote(lot, safe='')}/21/{quote(serial, safe='')}"
                f"?17={expiry}"
            )
        elif form == "datamatrix":
            out.append(f"]d201{gtin}17{expiry}10{lot}\x1d21{serial}")
        elif form == "element_string":
            out.append(f"01{gtin}17{expiry}10{lot}\x1d21{serial}")
        elif form == "hri":
            out.append(f"(01){gtin}(17){expiry}(10){lot}(21){serial}")
        else:
            out.append(f"]C101{gtin}10{lot}")
    return out, forms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    inputs, forms = corpus(n)
    for data in inputs[:1000]:  # warm up, and check the corpus is valid
        parse(data)
    best_cpu = best_wall = float("inf")
    for _ in range(3 if args.quick else 5):
        wall, cpu = time.perf_counter(), time.process_time()
        for data in inputs:
            parse(data)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    print(f"parsed {n} inputs in {best_cpu:.3f} s CPU, {best_wall:.3f} s wall (best passes)", file=sys.stderr)
    result = {
        "gs1_parse_per_s": round(n / best_cpu),
        "gs1_parse_per_s_wall": round(n / best_wall),
        "inputs": n,
        "forms": dict(forms),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
