"""Benchmark: what each training precision does to speed, memory and the weights, on the embedded Gemma-3-270M.
Prints figures; not a test.

    .venv/bin/python benchmarks/bench_precision.py                # 3 SFT steps per setting
    .venv/bin/python benchmarks/bench_precision.py --steps 5 --lr 5e-7

Each setting runs in its own process (peak RSS is per process), on the same 16 conversations, the same seed and
the same TRL SFT settings as the train stage (packing, assistant-only loss, batch 2 x 384 tokens):

- ``fp32``: fp32 weights, fp32 math (``sft.precision=fp32``);
- ``bf16 autocast``: fp32 master weights and Adam state, bf16 matmuls (``sft.precision=bf16``: what the train
  stage does);
- ``pure bf16``: the weights themselves in bf16 (what the train stage did before; shown for the lost updates).

It prints seconds per step (the first step apart: it includes warm-up), peak RSS, the optimizer state's dtype,
and how many of the weight tensors the steps changed. Where the CPU has no native bf16, the bf16 rows are emulated
(slow) and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {"fp32": ("fp32", "float32"), "bf16 autocast": ("bf16", "float32"), "pure bf16": ("bf16", "bfloat16")}
QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
             "Give me a synonym for happy.", "What is 12 times 12?", "Translate 'thank you' into Spanish.",
             "Why is the sky blue?", "Write a haiku about rain."]


def _child(setting: str, steps: int, lr: float, out: Path) -> dict:
    import resource
    import time

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.models import embedded_model_dir
    from magpie_exp.training.precision import precision_facts
    from magpie_exp.training.templates import prepare_tokenizer

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
    setup_environment(cache)
    prec, load = SETTINGS[setting]
    spec = load_config(f"sft.precision={prec}").sft
    base = embedded_model_dir("gemma3-270m", cache)
    tok, eot = prepare_tokenizer(str(base), spec, "sft")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"An answer to: {q} " * 6}]}
            for q in QUESTIONS * 2]
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, load))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            stamps.append(time.perf_counter())

    args = SFTConfig(output_dir=str(out), learning_rate=lr, max_steps=steps, per_device_train_batch_size=2,
                     max_length=384, packing=True, assistant_only_loss=True, eos_token=eot, bf16=prec == "bf16",
                     use_cpu=True, save_strategy="no", report_to=[], logging_steps=1, seed=0, lr_scheduler_type="constant",
                     dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    after = model.state_dict()
    changed = sum(1 for k, v in after.items() if not torch.equal(v, before[k]))
    per_step = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return {"setting": setting, "first_step_s": round(per_step[0], 2),
            "step_s": round(sum(per_step[1:]) / max(len(per_step) - 1, 1), 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "tensors_changed": changed, "tensors": len(after), **precision_facts(trainer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-5, help="the paper's SFT rate by default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_child(ns.child, ns.steps, ns.lr, Path(tmp))))
        return
    from magpie_exp.engines.hardware import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
           "MAGPIE_EXP_CPU_BF16": "1"}  # bf16 rows run on every CPU (emulated without native bf16)
    print(f"CPU native bf16: {'yes' if native else 'no (bf16 rows emulated)'}; {ns.steps} SFT steps at lr {ns.lr:g}, "
          "Gemma-3-270M, batch 2 x 384 tokens")
    print(f"{'setting':<15} {'s/step':>7} {'1st step s':>10} {'peak RSS GB':>11} {'optimizer state':>15} {'tensors changed':>16}")
    rows = []
    for setting in SETTINGS:
        proc = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(ns.steps), "--lr", str(ns.lr)],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{setting:<15} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{setting:<15} {row['step_s']:>7} {row['first_step_s']:>10} {row['peak_rss_gb']:>11} "
              f"{','.join(row['optimizer_state_dtypes']):>15} {row['tensors_changed']:>9} of {row['tensors']}")
    by = {r["setting"]: r for r in rows}
    if "fp32" in by and "bf16 autocast" in by:
        print(f"bf16 autocast / fp32 step time: {by['bf16 autocast']['step_s'] / by['fp32']['step_s']:.2f}")


if __name__ == "__main__":
    main()
