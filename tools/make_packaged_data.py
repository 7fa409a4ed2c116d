"""Build ``emoe/demo_data`` (the packaged slice behind ``--data-dir demo``) from the full offline layout.

    python tools/make_packaged_data.py [--full ../shared/data] [--check]

Each packaged file holds exactly the rows, in order, that ``emoe.data.load_task``'s fixed subset (``datasets``
shuffle, seed 0) draws from the full file for the presets' ``--max-train-samples`` / ``--max-eval-samples``, so a
preset reads the same rows from the slice as from the full data (the cross-task OOD sets excepted: as OOD sets, MRPC
and RTE are their train and validation files concatenated, then subset). ``--check`` only compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoe.data import DATA_ALIASES, read_file  # noqa: E402

# file -> rows: the demo preset (SST-2: 1,000 train, 200 per evaluation set) and glue-small (the same sizes).
FILES = {
    "sst2/train.jsonl": 1000, "sst2/validation.jsonl": 200, "imdb/test.jsonl": 200, "yelp/test.jsonl": 200,
    "amazon/test.jsonl": 200, "flipkart/test.jsonl": 200,
    "rte/train.jsonl": 1000, "rte/validation.jsonl": 200, "mrpc/train.jsonl": 1000, "mrpc/validation.jsonl": 200,
    "stsb/train.jsonl": 1000, "stsb/validation.jsonl": 200, "qqp/train.jsonl": 200, "scitail/test.jsonl": 200,
    "sick/test.jsonl": 200,
}


def rows(full: Path, rel: str, n: int) -> list[dict]:
    ds = read_file(full / rel)
    if n < len(ds):
        ds = ds.shuffle(seed=0).select(range(n))
    return ds.to_list()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", default=str(ROOT.parent / "shared" / "data"), help="the full layout")
    p.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = p.parse_args(argv)
    out, full, bad = DATA_ALIASES["demo"], Path(args.full), 0
    for rel, n in FILES.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(full, rel, n))
        path = out / rel
        if args.check:
            same = path.is_file() and path.read_text() == text
            bad += not same
            print(f"{'same' if same else 'DIFFERENT'}: {rel}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel} ({n} rows max, {len(text.encode()) / 1024:.0f} KB)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
