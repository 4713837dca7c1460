"""The paper's Tables 3, 4, 9 and 14 on the time split: their rows, the paper's own figures and the
settings (`Config`), shared by the runs (`paper_tables`) and the report (`paper_report`)."""

from __future__ import annotations

import dataclasses

SLICES = ("all", "<25", ">=25", "unseen")
TABLE3 = ("vanilla", "vanilla+FT", "MAML", "MAML+FT", "LiMAML", "LiMAML+FT")
TABLE4 = ("W&D-ID", "W&D-ID+FT", "LiMAML-ID+FT", "LiMAML-MLP+FT")
# The paper's numbers (pTap, DESIGN.md §1): AUC gain vs vanilla, all tasks.
PAPER_T3 = {"vanilla": "0 (baseline)", "vanilla+FT": "+0.75%", "MAML": "< 0", "MAML+FT": "+1.68%",
            "LiMAML": "< 0", "LiMAML+FT": "+1.47%"}
PAPER_T9 = {1: "+105%", 5: "+221%"}
SUPPORT = {"validation": "validation-period", "history": "pre-test (training + validation periods)"}


@dataclasses.dataclass
class Config:
    dataset: str = "ml-100k"
    data_path: str | None = None
    quantiles: tuple = (0.7, 0.85)
    max_train_samples: int = 100      # cap per user in training (most recent kept)
    max_support: int = 128            # validation samples per user used to fine-tune
    max_query: int = 256              # test samples per user scored
    epochs: int = 6
    tasks_per_batch: int = 32
    learning_rate: float = 2e-3       # β (Adam)
    inner_learning_rate: float = 0.5  # α: task learning rate, ~250x β
    inner_steps: int = 1              # n
    support_dropout: float = 0.0      # fraction of training tasks trained without adaptation (cold start)
    warm_start_epochs: int = 0        # >0: MAML / LiMAML start from the seed's trained vanilla weights, then
                                      # meta-train this many epochs (the global block first learns from every sample)
    eval_steps: int = 1               # fine-tune steps at evaluation
    meta_dim: int = 8
    meta_hidden: tuple = (32,)
    global_hidden: tuple = (64, 32)
    table9_steps: tuple = (1, 2, 3, 4, 5)
    table9_epochs: int | None = 3     # Table 9 models' epochs (default: `epochs`); time is compared per epoch
    seeds: tuple = (0, 1, 2)
    tables: tuple = ("3", "4", "9", "14")
    tuning: bool = False              # evaluate inside the training period only (for choosing settings)
    # fine-tune on: "validation" (paper §6) or "history" (every pre-test sample: train + validation periods)
    support_period: str = "validation"

    @classmethod
    def quick(cls, **overrides) -> "Config":
        return cls(**{"epochs": 4, "max_train_samples": 64, "max_support": 64, "max_query": 128,
                      "table9_steps": (1, 3), "table9_epochs": 2, "seeds": (0, 1), **overrides})


