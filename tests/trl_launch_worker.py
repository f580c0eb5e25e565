"""Train MixDPOTrainer on a split, as one process of ``accelerate launch`` (or alone).

    accelerate launch --cpu --num_processes 2 tests/trl_launch_worker.py SPLIT OUT BATCH

Writes OUT/log.json (rank 0): TRL's log history and the ranks each process trained per step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefcurate.integrations.trl import MixDPOConfig, MixDPOTrainer, load_pairs
from trainers.model import load_model


def main(split: str, out: str, batch: str) -> None:
    loaded = load_model("tiny", seed=0)
    args = MixDPOConfig(
        out,
        beta=0.1,
        label_smoothing=0.1,
        learning_rate=1e-3,
        per_device_train_batch_size=int(batch),
        num_train_epochs=1,
        logging_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        max_length=256,
        seed=0,
        gradient_checkpointing=False,
    )
    trainer = MixDPOTrainer(
        loaded.model, args=args, train_dataset=load_pairs(split), processing_class=loaded.tokenizer
    )
    seen: list[list[int]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *rest, **kwargs):
        seen.append(inputs["rank"].tolist())
        return compute_loss(model, inputs, *rest, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    process = trainer.accelerator.process_index
    Path(out, f"seen-{process}.json").write_text(json.dumps(seen))
    if trainer.accelerator.is_main_process:
        document = {
            "world_size": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "log": trainer.state.log_history,
        }
        Path(out, "log.json").write_text(json.dumps(document))


if __name__ == "__main__":
    main(*sys.argv[1:4])
