"""Exactly-once file output for the Beam pipelines, the same on every runner they run on.

  (shard, record) -> GroupByKey(shard)
    -> WriteTemp: the shard's records to <dir>/.temp/<name>-SSSSS.<attempt id> (`write(records, file)`)
    -> GroupByKey(one key) -> Commit: per shard, one temp file renamed to <dir>/<name>-SSSSS-of-NNNNN<suffix>

Only the outputs of a bundle's committed attempt reach Commit, so a retried (or duplicated) bundle
can neither add nor change a file: the temp file of a failed attempt is never renamed, and the driver
removes .temp before it commits the run (`remove_temp`). Shard names are fixed by the shard number,
and `write` sorts and de-duplicates its records, so a re-run writes the same bytes. If one shard
reaches Commit twice with different bytes (it was computed twice from different inputs), the run
fails instead of one version silently winning.

This is the idiom of Beam's own file sinks (WriteToParquet, fileio.WriteToFiles) built on GroupByKey
alone: those sinks rely on side inputs, outputs from finish_bundle and multi-output ParDos, which
some runners re-evaluate or drop, so their temp files are renamed twice or not at all (docs/refresh.md,
"Runners").
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections import defaultdict

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TEMP_DIR = ".temp"


class _WriteTemp(beam.DoFn):
    """(shard, records) -> (0, (shard, temp file)) under a name no other attempt uses."""

    def __init__(self, directory: str, name: str, write):
        self.directory, self.name, self.write = directory, name, write

    def process(self, element):
        shard, records = element
        path = FileSystems.join(self.directory, TEMP_DIR, f"{self.name}-{int(shard):05d}.{uuid.uuid4().hex}")
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            self.write(list(records), f)
        yield 0, (int(shard), path)


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _commit(element, directory: str, name: str, suffix: str, num_shards: int) -> list[str]:
    """Renames one temp file per shard to its final name; returns the final paths."""
    by_shard = defaultdict(set)
    for shard, path in element[1]:
        by_shard[shard].add(path)
    final_paths = []
    for shard, paths in sorted(by_shard.items()):
        final = FileSystems.join(directory, f"{name}-{shard:05d}-of-{num_shards:05d}{suffix}")
        present = sorted(p for p in paths if FileSystems.exists(p))
        if len(present) > 1 and len({_read(p) for p in present}) > 1:
            raise RuntimeError(f"{name} shard {shard} was written twice with different contents ({present}): "
                               "its input differed between two runs of the same work. Nothing is committed")
        if present:
            FileSystems.rename([present[0]], [final])
        elif not FileSystems.exists(final):  # neither renamed by an earlier attempt of this step nor there
            raise RuntimeError(f"{name} shard {shard}: the temp files {sorted(paths)} are gone")
        final_paths.append(final)
    return final_paths


class WriteShards(beam.PTransform):
    """(shard in [0, num_shards), record) -> <directory>/<name>-SSSSS-of-NNNNN<suffix>, one file per shard
    that has records, written by `write(records, binary file)` and committed exactly once."""

    def __init__(self, directory: str, name: str, suffix: str, num_shards: int, write):
        super().__init__()
        self.directory, self.name, self.suffix, self.num_shards, self.write = directory, name, suffix, num_shards, write

    def expand(self, keyed):
        return (keyed | "GroupByShard" >> beam.GroupByKey()
                | "WriteTemp" >> beam.ParDo(_WriteTemp(self.directory, self.name, self.write))
                | "GatherTemp" >> beam.GroupByKey()
                | "Commit" >> beam.FlatMap(_commit, self.directory, self.name, self.suffix, self.num_shards))


def remove_temp(directory: str) -> None:
    """Removes the .temp directories WriteShards left under `directory` (local file systems): the
    files of attempts that were never committed."""
    for path in glob.glob(os.path.join(glob.escape(directory), "**", TEMP_DIR), recursive=True, include_hidden=True):
        shutil.rmtree(path, ignore_errors=True)
