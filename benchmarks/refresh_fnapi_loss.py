"""Beam's FnApiRunner with several worker processes lost GroupByKey input once a stage's output was a
few hundred MiB: a repro with nothing of this package in it (found by the 604,000-task refresh, whose
completeness check refused the run: 97,810 of 604,000 tasks had no row).

Files -> Reshuffle -> FlatMap emitting, for each of `batches` batches of a file, one element
(bucket, (batch id, `size` random bytes)) per bucket -> CoGroupByKey -> per bucket: how many values
arrived. Every bucket must receive files x batches values.

Root cause (Beam 2.77): the driver sends each stage's input to the workers through
`TimeBasedBufferingClosableOutputStream`, flushed every second by a second thread. `flush` hands the
buffer to the send queue and then clears it; `write` takes no lock, so the chunks the driver wrote
while the hand-off waited on the full send queue were cleared unsent. Counting bytes at each hop
showed it: the driver received all 714.7 MB of the flattened stage output and sent 698.3 MB on
(bundle 12: 362,165,781 bytes written, 330,697,905 sent = 3 chunks of 10,489,292 bytes missing).
`beam_pipelines.runner.fix_fnapi_flush_race` puts writes under the flush lock; `run_and_wait`
applies it. --without-fix runs the pipeline with Beam as shipped.

Measured (Beam 2.77, 100 files x 5 batches x 114 buckets = 57,000 elements, 2 worker processes):
    size 12,500 B (679 MiB), without the fix: 908, 836, 3,344 lost (three runs); multi_threading
                                              mode too (1,768); in_memory (no gRPC data plane): 0
    size 25,000 B (1.3 GiB), without the fix: 12,570 lost (22 %)
    with the fix: 0 lost at 679 MiB and at 1.3 GiB
Not a `python -m benchmarks` module (no `main`): run it by hand.

Run:  python -m benchmarks.refresh_fnapi_loss [--files 100 --batches 5 --buckets 114 --size 12500 --workers 2]
                                              [--without-fix]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def run(files: int, batches: int, buckets: int, size: int, workers: int, fix: bool = True) -> tuple[int, int]:
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
    if fix:
        run_and_wait(p)
    else:
        p.run().wait_until_finish()
    with open(out) as f:
        return sum(int(line) for line in f), files * batches * buckets


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=114)
    parser.add_argument("--size", type=int, default=12_500, help="bytes per element")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--without-fix", action="store_true", help="Beam as shipped (shows the loss)")
    a = parser.parse_args()
    got, sent = run(a.files, a.batches, a.buckets, a.size, a.workers, fix=not a.without_fix)
    print(f"{got:,} of {sent:,} values arrived ({sent - got:,} lost), {sent * a.size / 2**20:,.0f} MiB, "
          f"{a.workers} worker(s), {'without' if a.without_fix else 'with'} the fix")
    sys.exit(0 if got == sent else 1)
