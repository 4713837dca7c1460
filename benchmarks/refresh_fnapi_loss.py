"""Beam's FnApiRunner with several worker processes loses GroupByKey input once a stage's output is a few
hundred MiB: a repro with nothing of this package in it (found by the 604,000-task refresh, whose
completeness check refused the run: 97,810 of 604,000 tasks had no row).

Files -> Reshuffle -> FlatMap emitting, for each of `batches` batches of a file, one element
(bucket, (batch id, `size` random bytes)) per bucket -> CoGroupByKey -> per bucket: how many values
arrived. Every bucket must receive files x batches values.

Measured (Beam 2.77, 100 files x 5 batches x 114 buckets = 57,000 elements):
    size  6,500 B (353 MiB), 2 workers: 57,000 / 57,000
    size 12,500 B (669 MiB), 2 workers: 56,092 and 56,164 / 57,000 in two runs (~8 lost per bucket:
                                        whole batches, every bucket)
    size 25,000 B (1.3 GiB), 2 workers: 44,430 / 57,000
    size 25,000 B (1.3 GiB), 1 worker (in_memory): 57,000 / 57,000
Not a `python -m benchmarks` module (no `main`): run it by hand.

Run:  python -m benchmarks.refresh_fnapi_loss [--files 100 --batches 5 --buckets 114 --size 12500 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def run(files: int, batches: int, buckets: int, size: int, workers: int) -> tuple[int, int]:
    """(values that arrived, values sent) through the CoGroupByKey."""
    import apache_beam as beam

    from beam_pipelines.runner import beam_options, run_and_wait

    def emit(path):
        for i in range(batches):
            for b in range(buckets):
                yield b, (f"{path}:{i:06d}", os.urandom(size))

    out = os.path.join(tempfile.mkdtemp(prefix="fnapi-loss-"), "counts")
    p = beam.Pipeline(options=beam_options([], workers))
    rows = p | beam.Create([f"file-{i}" for i in range(files)]) | beam.Reshuffle() | beam.FlatMap(emit)
    _ = ({"rows": rows, "other": p | "Other" >> beam.Create([(0, "x")])} | beam.CoGroupByKey()
         | beam.Map(lambda kv: str(len({i for i, _ in kv[1]["rows"]})))
         | beam.io.WriteToText(out, shard_name_template=""))
    run_and_wait(p)
    with open(out) as f:
        return sum(int(line) for line in f), files * batches * buckets


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=114)
    parser.add_argument("--size", type=int, default=12_500, help="bytes per element")
    parser.add_argument("--workers", type=int, default=2)
    a = parser.parse_args()
    got, sent = run(a.files, a.batches, a.buckets, a.size, a.workers)
    print(f"{got:,} of {sent:,} values arrived ({sent - got:,} lost), {sent * a.size / 2**20:,.0f} MiB, "
          f"{a.workers} worker(s)")
    sys.exit(0 if got == sent else 1)
