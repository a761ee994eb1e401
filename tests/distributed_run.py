"""Runs ``vilearn.train.trainer.train`` under ``accelerate launch`` (or alone) for
``test_distributed.py`` and records, per process, what it did: every item its loader served
(index, seed) with the step it served it for, and every checkpoint it wrote.

    python tests/distributed_run.py CONFIG OUT RECORD_DIR [--resume latest] [--max-steps N]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed_run.py ...

Writes RECORD_DIR/rank-<r>.jsonl. Not a test module: it is what the tests launch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("records", type=Path)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from vilearn.config import load_config
    from vilearn.train import trainer
    from vilearn.train.config import TrainConfig
    from vilearn.train.data import LatentViewDataset

    rank = int(os.environ.get("RANK", 0))
    args.records.mkdir(parents=True, exist_ok=True)
    record = (args.records / f"rank-{rank}.jsonl").open("a")

    def write(**row) -> None:
        record.write(json.dumps(row) + "\n")
        record.flush()

    serve = LatentViewDataset.__getitem__

    def served(self, key):
        write(kind="item", index=int(key[0]), seed=int(key[1]))
        return serve(self, key)

    save = trainer.save_state

    def saved(out, step, *rest, **kwargs):
        write(kind="save", step=step)
        return save(out, step, *rest, **kwargs)

    LatentViewDataset.__getitem__ = served
    trainer.save_state = saved
    config = load_config(TrainConfig, args.config)
    trainer.train(config, args.out, resume=args.resume, max_steps=args.max_steps)
    record.close()


if __name__ == "__main__":
    main()
