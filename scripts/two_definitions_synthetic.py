"""Two task definitions vs either one on the synthetic two-level data (docs/task_definitions.md §Measured).

Trains three models (user block, user x type block, both) and prints their test AUC and the gap (both minus
the best single one) as one JSON line. The defaults are setting D, the one tests/test_task_definitions_quality.py
runs at seed 0; the other settings of the table:

  A: --item-types 3 --type-strength 1 --samples 150 --train-users 200 --epochs 6 --train-slots 48 --support-slots 32
  B: as A with --train-users 600 --epochs 20
  C: as D with --type-strength 1

  for s in 0 1 2 3 4; do python scripts/two_definitions_synthetic.py --seed $s; done
"""

import argparse
import json

import keras

import limaml_tf as lt
from limaml_tf.evaluation import auc, predict_tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--item-types", type=int, default=8)
    p.add_argument("--type-strength", type=float, default=2.0)
    p.add_argument("--samples", type=float, default=300, help="mean samples per user")
    p.add_argument("--train-users", type=int, default=600, help="users whose training period trains the model")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-slots", type=int, default=128, help="max_samples_per_task of training")
    p.add_argument("--support-slots", type=int, default=96, help="max_support of the evaluation")
    a = p.parse_args()
    df, spec = lt.make_synthetic(num_tasks=600, seed=a.seed, item_types=a.item_types, type_strength=a.type_strength,
                                 mean_samples_per_task=a.samples)
    train_df, valid_df, test_df = lt.time_split(df, spec)
    train_df = train_df[train_df["user_id"].str[1:].astype(int) < a.train_users]
    spec = spec.fit(train_df)
    train = lt.split_tasks(train_df, spec, max_samples_per_task=a.train_slots)
    evaluation = lt.paired_tasks(valid_df, test_df, spec, max_support=a.support_slots, max_query=32)
    with_type = spec.meta_features + (spec.feature("item_type"),)
    aucs = {}
    for definitions in (("user",), ("user_x_type",), ("user", "user_x_type")):
        keras.utils.set_random_seed(a.seed)
        blocks = {d: lt.MLPMetaBlock(spec.meta_features if d == "user" else with_type, output_dim=8)
                  for d in definitions}
        model = lt.LiMAMLModel(blocks, lt.MLPGlobalBlock(spec.other_features), spec, inner_learning_rate=0.5)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        model.fit(train.dataset(16, seed=a.seed), epochs=a.epochs, verbose=0)
        aucs["+".join(definitions)] = auc(predict_tasks(model, evaluation, steps=1))
    gap = aucs["user+user_x_type"] - max(aucs["user"], aucs["user_x_type"])
    print(json.dumps({**vars(a), **aucs, "gap": gap}))


if __name__ == "__main__":
    main()
