"""The libCacheSim half of scripts/hit-ratio: run its simulators on the traces the hit-ratio
bench wrote, join their miss ratios to the bench's rows, print one table and write JSON.

usage: hit_ratio.py DIR OUT   (DIR holds manifest.json, rust.json and the traces; OUT: JSON)
"""

import json
import os
import sys

import libcachesim as lcs

SIMULATORS = {
    "wtinylfu": lcs.WTinyLFU,
    "s3fifo": lcs.S3FIFO,
    "fifo": lcs.FIFO,
    "lru": lcs.LRU,
    "belady": lcs.Belady,
}


def simulate(path, budget, entries, equal):
    out = {}
    for name, make in SIMULATORS.items():
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
        out[name] = make(budget).process_trace(reader)[0]
    if equal:
        # W-TinyLFU counted in objects: libCacheSim sizes its counting Bloom filter and its
        # decay period (32 x the main cache's size) from the cache size, which is bytes above:
        # a filter some 200 times the entries and a decay that never comes in the trace (an
        # exact, never-aging frequency count). Counted in objects, both follow the entries, as
        # moka's (10 x) and Caffeine's do.
        params = lcs.ReaderInitParam()
        params.ignore_obj_size = True
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE, params)
        out["wtinylfu_n"] = lcs.WTinyLFU(entries).process_trace(reader)[0]
    return out


def main():
    directory, out_path = sys.argv[1], sys.argv[2]
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(directory, "rust.json")) as f:
        rows = json.load(f)
    sims = {}
    for trace in manifest:
        path = os.path.join(directory, trace["file"])
        equal = trace["sizes"] == "equal"
        for share, budget, entries in trace["rows"]:
            sims[(trace["trace"], trace["sizes"], share)] = simulate(path, budget, entries, equal)
        os.remove(path)  # each trace is ~24 MB: gone once simulated
    head = ("trace", "sizes", "share", "tier", "moka", "moka-B", "disk", "disk+re",
            "W-TLFU", "W-TLFU-n", "S3-FIFO", "FIFO", "LRU", "Belady", "tier-moka", "tier-WTLFU")
    print("miss ratios (moka: unit weight with equal sizes; moka-B: moka weighted by bytes as the"
          " memory tier weighs, same byte budget; W-TLFU-n: W-TinyLFU counted in objects, equal"
          " sizes)")
    print("%-10s %-6s %5s " % head[:3] + " ".join("%8s" % h for h in head[3:]))
    for row in rows:
        sim = sims.get((row["trace"], row["sizes"], row["share"]), {})
        row.update(sim)
        peer = row["moka_unit"] if row["sizes"] == "equal" else row["moka_bytes"]
        cells = [row["tier"], row["moka_unit"], row["moka_bytes"], row.get("disk"),
                 row.get("disk_reinsert"), sim.get("wtinylfu"), sim.get("wtinylfu_n"),
                 sim.get("s3fifo"),
                 sim.get("fifo"), sim.get("lru"), sim.get("belady")]
        diffs = [row["tier"] - peer,
                 row["tier"] - sim["wtinylfu"] if "wtinylfu" in sim else None]
        print("%-10s %-6s %4.0f%% " % (row["trace"], row["sizes"], row["share"] * 100)
              + " ".join("%8s" % ("-" if c is None else "%.4f" % c) for c in cells)
              + " " + " ".join("%+8.4f" % d if d is not None else "%8s" % "-" for d in diffs))
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=1)
    print("written:", out_path)


if __name__ == "__main__":
    main()
