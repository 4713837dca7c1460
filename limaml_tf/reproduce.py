"""Compatibility shim: `limaml reproduce` now lives in `limaml_tf.experiments`.

The paper's Tables 3, 4, 9, 14 (time protocol, fixed settings) are in
`limaml_tf.experiments.paper_tables` / `paper_report`; the field's protocols (time, few-shot,
user-cold) with settings chosen on validation users in `limaml_tf.experiments.runner`; the
subcommand in `limaml_tf.experiments.command` (registered by `limaml_tf.cli`).
"""

from limaml_tf.experiments.command import add_parser  # noqa: F401
from limaml_tf.experiments.paper_report import plot, render_report, write_report  # noqa: F401
from limaml_tf.experiments.paper_tables import (PAPER_T3, PAPER_T9, SLICES, SUPPORT, TABLE3, TABLE4,  # noqa: F401
                                                Config, Data, build, evaluate, merge, prepare, reproduce, run_seed,
                                                score_with_meta_embeddings, train)
