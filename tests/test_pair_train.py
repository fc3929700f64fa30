"""Preference pairs and training. Fast: pair selection on hand-built scores. Slow (real models): the pair stage
with SmolLM2 on vLLM and a real (tiny) reward classifier; TRL SFT and DPO of Gemma-3-270M on CPU in which
every trainable parameter changes; LoRA; resume from a checkpoint; a 2-process (torchrun) run; bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import CACHE, REPO, schema
from magpie_exp.config import ConfigError
from magpie_exp.engines.hardware import CPU_BF16_ENV, cpu_has_bf16
from magpie_exp.stages.pair import choose_pair

SMOL = "embedded:smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("scores", "lengths", "kwargs", "expected"),
    [
        ([0.1, 0.9, 0.5], [10, 10, 10], {}, (1, 0, None)),
        ([0.5, 0.5, 0.5], [10, 10, 10], {}, (None, None, "tie")),
        ([0.50, 0.52], [10, 10], {"min_margin": 0.05}, (None, None, "margin < 0.05")),
        ([0.1], [10], {}, (None, None, "fewer than 2 scored responses")),
        ([None, 0.3, None], [10, 10, 10], {}, (None, None, "fewer than 2 scored responses")),
        ([None, 0.3, 0.7], [10, 10, 10], {}, (2, 1, None)),
        ([0.9, 0.2, 0.8, 0.8], [10, 10, 10, 10], {}, (0, 1, None)),
        # length control: the best (index 0) is 5x longer than the rejected one; the next best is kept
        ([0.9, 0.1, 0.6], [500, 100, 120], {"length_control": True, "length_ratio": 1.5}, (2, 1, None)),
        ([0.9, 0.1], [500, 100], {"length_control": True}, (None, None, "length control: no other response short enough")),
    ],
)
def test_pair_selection(scores, lengths, kwargs, expected) -> None:
    choice = choose_pair(scores, lengths, **kwargs)
    assert (choice.chosen, choice.rejected, choice.reason) == expected
    if choice.reason is None:
        assert choice.margin == pytest.approx(scores[choice.chosen] - scores[choice.rejected])


def test_pair_and_train_configs() -> None:
    with pytest.raises(ConfigError, match="pair.num_responses must be >= 2"):
        schema("pair.num_responses=1")
    with pytest.raises(ConfigError, match="pair.temperature must be > 0"):
        schema("pair.temperature=0")
    with pytest.raises(ConfigError, match="sft.chat_template must be one of"):
        schema("sft.chat_template=vicuna")
    paper = schema("sft=llama3-8b-paper", "dpo=llama3-8b-paper")
    assert (paper.sft.learning_rate, paper.sft.num_train_epochs, paper.sft.max_length, paper.sft.warmup_steps) == (2e-5, 2, 8192, 100)
    assert paper.sft.per_device_train_batch_size * paper.sft.gradient_accumulation_steps * 4 == 32  # 4 GPUs
    assert (paper.dpo.beta, paper.dpo.learning_rate, paper.dpo.num_train_epochs) == (0.01, 5e-7, 1)
    assert paper.dpo.per_device_train_batch_size * paper.dpo.gradient_accumulation_steps * 4 == 128
    assert paper.sft.chat_template == "llama3" and paper.sft.assistant_only_loss and paper.sft.packing


def test_accelerate_launch_configs_parse() -> None:
    import yaml

    for name, kind in (("fsdp", "FSDP"), ("zero3", "DEEPSPEED")):
        cfg = yaml.safe_load((REPO / "recipes" / "accelerate" / f"{name}.yaml").read_text())
        assert cfg["distributed_type"] == kind and cfg["num_processes"] >= 2


def test_bf16_on_hardware_without_it_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "0")  # a CPU without native bf16, whatever this one has
    with pytest.raises(ConfigError, match="sft.precision=bf16 but this machine has no native bf16.*use sft.precision=auto"):
        schema("stage=train", "sft.precision=bf16")
    assert schema("stage=train").sft.precision == "auto"  # auto: fp32 there


@pytest.mark.parametrize("native", ["0", "1"])
def test_trained_weights_are_fp32_under_every_precision(monkeypatch, native: str) -> None:
    """bf16/fp16 is the compute dtype; what the optimizer updates is loaded in fp32, except a frozen LoRA base."""
    import torch

    from magpie_exp.training.precision import load_dtype, save_dtype

    monkeypatch.setenv(CPU_BF16_ENV, native)
    for prec in ("auto", "fp32") + (("bf16",) if native == "1" else ()):
        spec = schema(f"sft.precision={prec}").sft
        assert load_dtype(spec, "sft") == torch.float32, prec
        lora = schema(f"sft.precision={prec}", "sft.lora.enabled=true").sft
        compute = torch.bfloat16 if prec == "bf16" or (prec == "auto" and native == "1") else torch.float32
        assert load_dtype(lora, "sft") == compute  # frozen base in the compute dtype; PEFT keeps adapters fp32
        assert load_dtype(lora, "sft", zero3=True) == torch.float32  # TRL keeps adapters in the base dtype there
    assert save_dtype(schema().sft) == torch.float32 and save_dtype(schema("dpo.save_dtype=bf16").dpo) == torch.bfloat16
    with pytest.raises(ConfigError, match="dpo.save_dtype must be fp32, bf16 or fp16; got 'int8'"):
        schema("dpo.save_dtype=int8")


def test_paper_recipes_keep_fp32_master_weights(monkeypatch) -> None:
    """The GPU recipes: bf16 compute on fp32 masters (our loader, accelerate's FSDP2 upcast, DeepSpeed's fp32
    partitions), saved in bf16 as the paper's models were, with the rounding report in stats.json."""
    import torch
    import yaml

    from magpie_exp.training.precision import load_dtype

    monkeypatch.setenv(CPU_BF16_ENV, "1")  # precision=bf16 is checked against the hardware; here: a bf16 machine
    paper = schema("sft=llama3-8b-paper", "dpo=llama3-8b-paper")
    for key in ("sft", "dpo"):
        spec = getattr(paper, key)
        assert (spec.precision, spec.save_dtype, spec.lora.enabled) == ("bf16", "bf16", False)
        assert load_dtype(spec, key) == load_dtype(spec, key, zero3=True) == torch.float32
    fsdp = yaml.safe_load((REPO / "recipes" / "accelerate" / "fsdp.yaml").read_text())
    # FSDP2 with mixed_precision bf16: accelerate keeps (upcasts) trainable parameters in fp32 and casts to bf16
    # for compute (MixedPrecisionPolicy.param_dtype); no policy in the file overrides that
    assert fsdp["mixed_precision"] == "bf16" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert not any("mixed_precision" in k for k in fsdp["fsdp_config"])
    zero3 = yaml.safe_load((REPO / "recipes" / "accelerate" / "zero3.yaml").read_text())
    # DeepSpeed bf16 with ZeRO-3: fp32 master partitions in the optimizer; the consolidated save is 16-bit
    assert zero3["mixed_precision"] == "bf16" and zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True


def test_saving_in_bf16_reports_what_rounding_kept(tmp_path: Path) -> None:
    """A change below half a bf16 step is rounded away when the model is saved in bf16: the report says which."""
    import torch
    from safetensors.torch import load_file, save_file

    from magpie_exp.training.weights import cast_and_compare

    init, trained = tmp_path / "init", tmp_path / "trained"
    init.mkdir(), trained.mkdir()
    start = {"norm": torch.ones(8), "proj": torch.full((4, 4), 0.02), "frozen": torch.full((3,), 0.5),
             "steps": torch.arange(3)}
    save_file({k: v.to(torch.bfloat16) if k == "frozen" else v for k, v in start.items()}, str(init / "model.safetensors"))
    (trained / "config.json").write_text('{"dtype": "float32"}')
    after = dict(start, norm=start["norm"] + 5e-7, proj=start["proj"] + 1e-3)  # 5e-7 << bf16 step at 1 (7.8e-3)
    save_file(after, str(trained / "model.safetensors"))
    report = cast_and_compare(trained, init, torch.bfloat16)
    saved = load_file(str(trained / "model.safetensors"))
    assert saved["norm"].dtype == saved["proj"].dtype == torch.bfloat16 and saved["steps"].dtype == torch.int64
    assert (report["compared"], report["changed_by_training"], report["changed_in_saved"]) == (3, 2, 1)
    assert report["examples_rounded_away"] == ["norm"] and report["tensors_whose_change_was_rounded_away"] == 1
    assert (report["elements_changed_by_training"], report["elements_changed_in_saved"]) == (24, 16)
    assert report["share_of_changes_kept"] == pytest.approx(16 / 24, abs=1e-6)
    assert json.loads((trained / "config.json").read_text())["dtype"] == "bfloat16"
    again = cast_and_compare(trained, init, torch.float32)  # back to fp32: lossless, and the loss is visible
    assert again["changed_by_training"] == again["changed_in_saved"] == 1


# -- real runs -----------------------------------------------------------------------------------------------

CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name three primary colours.", "Red, yellow and blue."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Give me a synonym for happy.", "Joyful."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
]
TINY = ["sft.max_steps=2", "sft.max_length=96", "sft.per_device_train_batch_size=2", "sft.save_steps=1",
        "dpo.max_steps=2", "dpo.max_length=96", "dpo.per_device_train_batch_size=2", "dpo.save_steps=10"]


def write_conversations(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in CONVERSATIONS))
    return path


def write_pairs(path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": "I don't know."}]} for q, a in CONVERSATIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def sft_run(request, tmp_path_factory):
    """Two SFT steps of Gemma-3-270M under each precision. bf16 runs on every machine: where the CPU has no native
    bf16 it is made to count as having it (emulated: slower, numerically the same), so the GPU path's numerics are
    checked on every CI machine."""
    from magpie_exp.models import embedded_model_dir
    from magpie_exp.stages.train import run_train

    tmp = tmp_path_factory.mktemp(f"sft-{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "bf16" and not cpu_has_bf16():
            patch.setenv(CPU_BF16_ENV, "1")
        cfg = schema(f"input={write_conversations(tmp / 'sft.jsonl')}", f"paths.outputs={tmp}", "stage=train", *TINY,
                     "sft.save_steps=2", f"sft.precision={request.param}")
        result = run_train(cfg)
    yield request.param, result, embedded_model_dir("gemma3-270m", CACHE)
    shutil.rmtree(tmp, ignore_errors=True)  # 1 GB of fp32 weights: not kept to the end of the session


def _unchanged(before: dict, after: dict) -> list[str]:
    return [k for k in after if k in before and (after[k].float() - before[k].float()).abs().max() == 0]


@pytest.mark.slow
def test_sft_changes_every_parameter_and_keeps_a_chat_template(sft_run) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    prec, result, base = sft_run
    model = Path(result.exports["model"])
    before, after = weights(base), weights(model)
    trained = [k for k in after if k in before]
    assert len(trained) >= len(after) - 1 and trained
    assert _unchanged(before, after) == []
    stats = result.stats
    # master weights and Adam's moments are fp32 whatever the compute dtype; bf16 is autocast
    assert stats["precision"] == {"autocast": None if prec == "fp32" else "bf16", "trainable_dtypes": ["float32"],
                                  "frozen_dtypes": [], "optimizer_state_dtypes": ["float32"]}
    assert stats["weights"]["saved_dtype"] == "float32" and stats["weights"]["tensors_whose_change_was_rounded_away"] == 0
    assert stats["weights"]["changed_in_saved"] == stats["weights"]["compared"] == len(trained)
    assert {v.dtype for v in after.values()} == {torch.float32}  # sft.save_dtype=fp32: every update kept
    assert stats["steps"] == 2 and len(stats["loss"]) == 2 and all(e["loss"] > 0 for e in stats["loss"])
    tok = AutoTokenizer.from_pretrained(model)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>model\n")
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert eot in GenerationConfig.from_pretrained(model).eos_token_id
    # the step-2 checkpoint (3 GB with the optimizer state) went once the model was saved (sft.keep_checkpoints=false)
    assert not (result.stage_dir / "checkpoints").exists()


@pytest.mark.slow
def test_lora_sft_trains_the_adapter_and_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from magpie_exp.stages.keys import folder
    from magpie_exp.stages.train import run_train

    overrides = [f"input={write_conversations(tmp_path / 'sft.jsonl')}", f"paths.outputs={tmp_path}", "stage=train",
                 "sft.lora.enabled=true", "sft.lora.r=4", "sft.learning_rate=1e-3", *TINY, "sft.warmup_steps=0", "sft.save_total_limit=2"]
    cfg = schema(*overrides, "sft.keep_checkpoints=true")
    first = run_train(cfg)
    adapter = first.stage_dir / "adapter"
    assert (adapter / "adapter_config.json").exists()
    lora_b = [v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    # the adapters train in fp32; the frozen base is held in the compute dtype
    facts = first.stats["precision"]
    assert facts["trainable_dtypes"] == facts["optimizer_state_dtypes"] == ["float32"]
    assert facts["frozen_dtypes"] == (["bfloat16"] if facts["autocast"] == "bf16" else ["float32"])
    # model/ is a plain model folder with the adapter merged in: the adapted projections changed, nothing else did
    from magpie_exp.models import embedded_model_dir

    before, after = weights(embedded_model_dir("gemma3-270m", CACHE)), weights(Path(first.exports["model"]))
    changed = {k for k in after if k in before and (after[k].float() - before[k].float()).abs().max() > 0}
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                       "gate_proj.weight", "up_proj.weight", "down_proj.weight")) for k in changed), changed

    out = first.stage_dir
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    shutil.rmtree(out / "model")
    (out / "stats.json").unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")  # killed after the first checkpoint
    again = run_train(cfg)
    assert again.stats["resumed_from"].endswith("checkpoint-1") and again.stats["steps"] == 2
    # the resumed run retraces the uninterrupted one (same data order, optimizer and RNG state from the checkpoint)
    assert [e["loss"] for e in again.stats["loss"]] == pytest.approx([e["loss"] for e in first.stats["loss"]], rel=1e-3)
    assert run_train(cfg).cache_hit
    # keep_checkpoints is housekeeping, not a training setting: the same folder
    assert folder(cfg, "sft") == out
    assert folder(schema(*overrides, "sft.keep_checkpoints=false"), "sft") == out
    assert folder(schema(*overrides, "sft.save_steps=2"), "sft") != out


@pytest.mark.slow
def test_dpo_from_the_sft_model_at_the_paper_learning_rate(sft_run, tmp_path: Path) -> None:
    """One DPO step at the paper's lr 5e-7 changes every weight under fp32 and under bf16 (fp32 masters: a 5e-7
    step is above half an fp32 step for any weight below 8, and far below half a bf16 step). Saved in bf16, the
    same model loses most of that step, and stats.json says so."""
    from magpie_exp.stages.train import run_train

    prec, sft, _ = sft_run
    with pytest.MonkeyPatch.context() as patch:
        if prec == "bf16" and not cpu_has_bf16():
            patch.setenv(CPU_BF16_ENV, "1")
        common = [f"input={write_pairs(tmp_path / 'pairs.jsonl')}", "stage=train", "trainer=dpo",
                  f"dpo.init_from={sft.exports['model']}", *TINY, "dpo.max_steps=1", "dpo.learning_rate=5e-7",
                  "dpo.warmup_steps=0", f"dpo.precision={prec}"]
        result = run_train(schema(*common, f"paths.outputs={tmp_path / 'fp32'}"))
        assert result.stats["precision"]["optimizer_state_dtypes"] == ["float32"]
        assert result.stats["precision"]["trainable_dtypes"] == ["float32"]
        before, after = weights(Path(sft.exports["model"])), weights(Path(result.exports["model"]))
        assert _unchanged(before, after) == []
        losses = [entry["loss"] for entry in result.stats["loss"]]
        assert len(losses) == 1 and abs(losses[0] - 0.6931) < 0.05  # starts at log 2: policy == reference
        if prec == "fp32":
            return
        rounded = run_train(schema(*common, "dpo.save_dtype=bf16", f"paths.outputs={tmp_path / 'bf16'}"))
    report = rounded.stats["weights"]
    saved = weights(Path(rounded.exports["model"]))
    kept = len(saved) - len(_unchanged({k: v.to(saved[k].dtype) for k, v in before.items() if k in saved}, saved))
    assert report["saved_dtype"] == "bfloat16" and report["changed_in_saved"] == kept < report["changed_by_training"]
    assert report["tensors_whose_change_was_rounded_away"] == report["changed_by_training"] - kept > 0
    assert report["share_of_changes_kept"] < 0.1  # a 5e-7 step survives bf16 rounding only near a rounding boundary


@pytest.mark.slow
def test_pair_stage_with_vllm_and_a_tiny_reward_model(tmp_path: Path, vllm_engine, tiny_reward_model) -> None:
    from magpie_exp.stages.pair import run_pair

    cfg = schema(f"input={write_conversations(tmp_path / 'in.jsonl')}", f"paths.outputs={tmp_path}", "stage=pair",
                 "engine.enforce_eager=true", "pair.num_responses=3", "pair.max_tokens=32",
                 "tag.reward_source=model", f"tag.reward_model.model={tiny_reward_model}", "tag.reward_model.name=tiny-rm")
    result = run_pair(cfg, engines={SMOL: vllm_engine}, show_progress=False)
    stats = result.stats
    assert stats["input_records"] == 6 and stats["responses"] == 18
    assert stats["pairs"] + sum(stats["dropped"].values()) == 6
    rows = [json.loads(line) for line in (result.stage_dir / "shards").glob("*.jsonl").__next__().open()]
    for row in rows:
        assert len(row["responses"]) == 3 and len(row["scores"]) == 3
        assert row["chosen_score"] == max(s for s in row["scores"] if s is not None) > row["rejected_score"]
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    exported = [json.loads(line) for line in open(result.exports["pairs"])]
    assert set(exported[0]) >= {"prompt", "chosen", "rejected", "margin"}
    assert run_pair(cfg, engines={SMOL: vllm_engine}, show_progress=False).cache_hit


@pytest.mark.slow
def test_pair_stage_ranks_by_the_judge_score(tmp_path: Path, vllm_engine) -> None:
    """The embedded stand-in for a reward model: SmolLM2 rates each answer 1-10 and the score is the expectation
    under its token probabilities (tag.judge_mode=logprobs), so scores rarely tie. Which answers win depends on
    the numerics, so this asserts what holds on every CPU: every instruction is a pair or a counted drop, a pair's
    chosen score beats its rejected one, a score is in [1, 10] or a counted failure."""
    from magpie_exp.stages.pair import run_pair

    cfg = schema(f"input={write_conversations(tmp_path / 'in.jsonl')}", f"paths.outputs={tmp_path}", "stage=pair",
                 "engine.enforce_eager=true", "pair.num_responses=3", "pair.max_tokens=32", "tag.reward_source=judge")
    try:
        run_pair(cfg, engines={SMOL: vllm_engine}, show_progress=False)
    except ConfigError as exc:  # every instruction tied or failed: the one clear line, and the counts below
        assert str(exc).startswith("pair: no preference pair survived") and "raise pair.num_responses" in str(exc)
    manifest = json.loads(next((tmp_path / "stages" / "pair").glob("*/manifest.json")).read_text())
    totals = Counter()
    for info in manifest["shards"].values():
        totals.update(info["stats"])
    dropped = {k: v for k, v in totals.items() if k.startswith("dropped:")}
    assert totals["responses"] == 18 and totals["pairs"] + sum(dropped.values()) == 6
    assert set(dropped) <= {"dropped:tie", "dropped:fewer than 2 scored responses"}, dropped
    rows = [json.loads(line) for shard in sorted((tmp_path / "stages" / "pair").rglob("shards/*.jsonl")) for line in shard.open()]
    assert len(rows) == totals["pairs"]
    for row in rows:
        assert all(s is None or 1 <= s <= 10 for s in row["scores"]), row["scores"]
        assert row["chosen_score"] > row["rejected_score"] and row["reward"].endswith("(judge score)")


@pytest.mark.slow
def test_two_process_run_on_cpu(tmp_path: Path) -> None:
    """Two DDP processes (gloo) through torchrun, the launcher accelerate itself uses on GPUs; on CPU
    `accelerate launch` only starts several processes through MPI."""
    data = write_conversations(tmp_path / "sft.jsonl")
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "magpie_exp.cli",
           "stage=train", f"input={data}", f"paths.outputs={tmp_path}", "sft.max_steps=1", "sft.max_length=64",
           "sft.per_device_train_batch_size=1", "sft.save_steps=10"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(next(tmp_path.glob("stages/train/*/stats.json")).read_text())
    assert stats["steps"] == 1 and stats["world_size"] == 2


def test_bad_training_input(tmp_path: Path) -> None:
    from magpie_exp.models import embedded_model_dir
    from magpie_exp.stages.train import run_train
    from magpie_exp.training.templates import prepare_tokenizer

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        run_train(schema(f"input={empty}", f"paths.outputs={tmp_path}", "stage=train"))
    not_pairs = write_conversations(tmp_path / "conv.jsonl")
    with pytest.raises(ConfigError, match="line 1 is not a conversational preference pair"):
        run_train(schema(f"input={not_pairs}", f"paths.outputs={tmp_path}", "stage=train", "trainer=dpo",
                         f"dpo.init_from={embedded_model_dir('gemma3-270m', CACHE)}"))
    with pytest.raises(ConfigError, match="dpo.init_from is null and this config's SFT model"):
        run_train(schema(f"input={write_pairs(tmp_path / 'p.jsonl')}", f"paths.outputs={tmp_path}", "stage=train",
                         "trainer=dpo"))
    gemma = embedded_model_dir("gemma3-270m", CACHE)  # a base model: no chat template of its own
    spec = schema("sft.chat_template=null").sft
    with pytest.raises(ConfigError, match="has no chat template; set sft.chat_template to one of llama3, gemma, chatml"):
        prepare_tokenizer(str(gemma), spec, "sft")
