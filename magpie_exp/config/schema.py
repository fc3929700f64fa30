"""The typed config schema: dataclasses registered in Hydra's ConfigStore, so a typo fails at composition
(``Key 'temprature' not in 'SamplingConfig'``), before a sweep starts. Every key here is read by code: add one
only together with the code that reads it (and the same default in ``conf/config.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """Bad user input; the message is one line that names the config key, the value and the fix."""


@dataclass
class InstructionSampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512


@dataclass
class ResponseSampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    repetition_penalty: float = 1.0


@dataclass
class GeneratorConfig:
    name: str = MISSING  # short name used in record ids and provenance
    model: str = MISSING  # local folder, "embedded:<name>", or a hub id (resolved by vLLM / transformers)
    chat_template: str | None = None  # Jinja text or a .jinja path; default: the tokenizer's own
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false} for Qwen3
    pre_query_template: str | None = None  # verbatim override where the official table deliberately differs
    stop_token_ids: list[int] | None = None  # default: eos + the template's turn-boundary markers (generators.py)
    template_date: str = "2026-01-01"  # what strftime_now returns while the chat template renders (pinned prompts)
    reasoning: str = "default"  # default (the template's) | on | off: drives enable_thinking / thinking
    reasoning_format: str = "auto"  # auto (from the template) | none | think | harmony | gemma4
    stop_strings: list[str] = field(default_factory=list)
    single_line: bool = False  # stop instructions at the first newline (the official "early stopping")
    sanitize: str | None = None  # official clean-up rules: llama3 | gemma2 | null
    ban_first_tokens: list[str] = field(default_factory=list)  # e.g. markdown headers for Llama-3.1
    instruction: InstructionSampling = field(default_factory=InstructionSampling)
    response: ResponseSampling = field(default_factory=ResponseSampling)
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False  # only ever true when a config says so for a named model


@dataclass
class EngineConfig:
    type: str = "vllm"  # vllm | hf | openai
    dtype: str = "auto"  # vllm, hf; auto = bfloat16 on GPU and on CPUs with native bf16, else float32
    enforce_eager: bool = False  # vllm: skip compilation (fast start, ~10-20% slower decode)
    cpu_kv_cache_gib: int = 2  # vllm on CPU (whole GiB)
    cpu_cores: int | None = None  # vllm on CPU: bind cores 0..N-1 (null = all cores)
    gpu_memory_utilization: float = 0.9  # vllm on GPU
    max_num_seqs: int | None = None  # vllm: null = 128 on CPU (engines/vllm_engine.py), vLLM's default on GPU
    batch_size: int = 64  # hf
    num_threads: int = 1  # hf: torch threads
    base_urls: list[str] = field(default_factory=list)  # openai
    served_model_name: str | None = None  # openai: default is generator.model
    api_key_env: str | None = None  # openai: the environment variable holding the key
    max_concurrency: int = 8  # openai
    timeout_s: float = 600.0  # openai
    max_retries: int = 5  # openai
    api: str = "completions"  # openai: completions (token ids, vLLM servers) | chat (messages: hosted judges)


@dataclass
class ExecutorConfig:
    """Where in-process engines (vllm, hf) run: here, or as Ray actors that share out every batch (conf/executor/)."""

    type: str = "local"  # local | ray
    address: str | None = None  # ray: null = start a Ray cluster inside this run; auto = join the running one; ray://h:p
    workers: int | None = 2  # ray: engine actors per model; null = as many as the cluster's GPUs (or CPUs) allow
    cpus_per_worker: float = 1.0  # ray: CPUs each actor reserves (on CPU: the cores its vLLM binds)
    gpus_per_worker: float | None = None  # ray: null = the model's tensor_parallel_size when the cluster has GPUs, else 0
    chunks_per_worker: int = 1  # ray: a batch is cut into workers x this many chunks, handed out as actors free up
    max_retries: int = 3  # ray: a chunk whose actor died goes to another actor up to this many times
    max_restarts: int = 1  # ray: Ray restarts a dead actor (which reloads its model) this many times
    num_cpus: int | None = None  # ray, a cluster started here: CPUs it offers (null = all)
    object_store_mib: int = 512  # ray, a cluster started here: object store size


@dataclass
class GridCell:
    temperature: float = 1.0
    top_p: float = 1.0
    count: int = MISSING


@dataclass
class SystemPrompt:
    name: str = MISSING  # control task name recorded in provenance ("math", "code", "zh", ...)
    text: str | None = MISSING  # null = the chat template's own default (no control)
    weight: float = 1.0
    prefill: str | None = None  # first words of the user turn, after the pre-query and kept in the instruction


@dataclass
class MultiTurnConfig:
    num_turns: int = 2  # total user turns per multi-turn conversation (1 = single-turn only)
    fraction: float = 0.25  # share of conversations extended to num_turns
    # System prompt shown while the model writes follow-up questions (our wording of the paper's Fig. 14).
    system_prompt: str | None = (
        "You are a helpful AI assistant. The user will hold a multi-round conversation with you: "
        "they ask an initial question and then follow-up questions related to it. "
        "Give thorough, relevant and insightful answers."
    )


@dataclass
class GenerateConfig:
    count: int | None = 48  # records to write (null when generate.grid gives counts)
    grid: list[GridCell] = field(default_factory=list)  # instruction sampling grid (paper Table 7)
    samples_per_request: int = 64  # n samples per engine request from the one shared prefix
    shard_size: int = 24  # records per shard: the unit of resume and of parallel work
    engine_batch: int = 256  # records made side by side (several shards) per engine call; the shard stays the unit of resume
    waves_in_flight: int = 2  # engine_batch waves drawn at once where the engines take concurrent calls (ray, openai)
    stream: bool = True  # a wave's requests join the running batch as each shard asks (engines that stream: vllm)
    oversample: float = 1.3  # sample this multiple of the missing count each round (drops get replaced)
    max_rounds: int = 8  # rounds per shard before giving up on filling it
    system_prompts: list[SystemPrompt] = field(default_factory=list)  # control tasks; empty = template default
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    export: list[str] = field(default_factory=lambda: ["messages", "sharegpt", "hf", "parquet"])
    include_system: bool = False  # keep the steering system turn in exported conversations


@dataclass
class RewardModelConfig:
    name: str = "none"
    model: str | None = None  # a sequence-classification reward model (folder or hub id); null = no model
    batch_size: int = 8
    max_length: int = 4096  # tokens; longer conversations are truncated
    dtype: str = "auto"
    trust_remote_code: bool = False  # ArmoRM needs it: set only in its named config


@dataclass
class EmbedderConfig:
    name: str = "all-minilm-l6-v2"
    model: str = "embedded:all-minilm-l6-v2"  # sentence-transformers folder, hub id, or the embedded MiniLM
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class DedupConfig:
    threshold: float = 0.05  # squared L2 between unit vectors (= 2 - 2 cos); 0.05 is cos > 0.975, the official value
    index: str = "auto"  # auto (flat up to exact_max, else ivf) | flat | ivf | hnsw
    exact_max: int = 200_000
    nlist: int | None = None  # IVF cells; null = sqrt(records)
    nprobe: int = 4  # IVF cells searched per query (benchmarks/bench_dedup.py: 12x exact at 1M, same decisions)
    hnsw_m: int = 32  # HNSW links per node
    ef_search: int = 64  # HNSW search breadth
    device: str = "cpu"  # cpu | cuda (faiss-gpu)
    keep_by: list[str] = field(default_factory=lambda: ["reward", "input_quality", "id"])  # best first, per cluster


@dataclass
class DecontamConfig:
    # Evaluation sets whose prompts no training record may reproduce (those found locally; see decontam.py).
    benchmarks: list[str] = field(default_factory=lambda: ["ifeval", "mt_bench", "arena_hard", "alpaca_eval"])
    lm_eval_local_data: bool = True  # also the prompts of evaluation.lm_eval.local_data files
    ngram: int = 13  # word n-grams (Tulu 3, SmolLM2)
    ngram_overlap: float | None = 0.5  # contaminated at this share of the shorter text's n-grams; null = off
    similarity: float | None = 0.9  # ... or at this cosine with the tag embedder; null = off
    responses: bool = False  # also compare the answers (n-grams only)


@dataclass
class TagConfig:
    # Which taggers run: length, language, quality, difficulty, task_category, judge_score, safety, reward,
    # base_reward (URIAL base response + its reward + the reward difference), embedding (+ dedup), decontam.
    taggers: list[str] = field(default_factory=lambda: [
        "length", "language", "quality", "difficulty", "task_category", "safety", "reward", "embedding", "decontam"])
    judge: GeneratorConfig | None = None  # judge for quality/difficulty/task_category/judge_score
    # logprobs: quality, difficulty and judge_score asked as a number and read from the judge's token probabilities
    # (one forward pass; expected score + distribution); explain: a JSON answer with an explanation (all four)
    judge_mode: str = "logprobs"
    judge_top_logprobs: int = 20  # top-k log-probabilities read per position (vLLM serves up to 20 by default)
    judge_min_mass: float = 0.0  # a rating whose answers hold less of the probability than this is a failure
    judge_max_tokens: int = 384  # explain mode, and task_category in either mode
    explanation_chars: int = 300  # schema maxLength of free-text answer fields
    guard: GeneratorConfig | None = None
    guard_format: str = "chat_template"  # chat_template (Llama Guard builds its prompt) | instruction (a chat model)
    reward_source: str = "model"  # model: tag.reward_model | judge: the judge's 1-10 score
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    base_model: GeneratorConfig | None = None  # a pretrained base model answering URIAL-style
    base_engine: EngineConfig | None = None  # the base model's engine; null = the engine group
    base_max_tokens: int = 256
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    batch_size: int = 256  # records per engine call
    plots: bool = True


@dataclass
class Rule:
    field: str = MISSING  # a record field: tags.<name>, or one of the derived ones (instruction, response, ...)
    op: str = MISSING  # == != > >= < <= in not_in regex not_regex endswith not_endswith is_true is_false
    value: Any = None
    name: str | None = None  # the drop reason; default "<field> <op> <value>"


@dataclass
class QuotaGroup:
    name: str = MISSING
    values: list[Any] = field(default_factory=list)  # values of quota.by in this group
    share: float | None = None  # share of the kept records
    max: int | None = None  # or an absolute cap


@dataclass
class Quota:
    by: str | None = None  # field the groups are defined on (e.g. tags.task_category); null = no quotas
    groups: list[QuotaGroup] = field(default_factory=list)


@dataclass
class SelectConfig:
    by: str | None = "response_length"  # keep the top records by this field; null = keep all that pass
    descending: bool = True
    count: int | None = None  # keep exactly this many (overrides the scaled count)
    recipe_count: int | None = None  # the recipe's size (e.g. 300000) ...
    recipe_pool: int | None = None  # ... out of this many records (e.g. 1000000): keeps that fraction here


@dataclass
class CurateConfig:
    name: str = "none"
    description: str = ""
    rules: list[Rule] = field(default_factory=list)
    dedup: bool = True  # drop near-duplicates that are not their cluster's keeper
    decontaminate: bool = False  # drop records the decontam tagger matched to an evaluation prompt
    quota: Quota = field(default_factory=Quota)
    select: SelectConfig = field(default_factory=SelectConfig)
    write_rejected: bool = True  # rejected.jsonl with the reason of each dropped record
    export: list[str] = field(default_factory=lambda: ["messages", "sharegpt", "hf", "parquet"])


@dataclass
class PairConfig:
    num_responses: int = 5  # k responses per instruction, sampled in one request (n=k)
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int | None = None  # null = the response generator's response.max_tokens
    min_margin: float = 0.0  # chosen - rejected must be at least this; ties are always dropped
    length_control: bool = False  # chosen = best response no longer than length_ratio x the rejected one
    length_ratio: float = 1.5


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = "all-linear"
    load_in_4bit: bool = False  # QLoRA (bitsandbytes, GPU only)


@dataclass
class TrainSpec:
    """Hyper-parameters of one TRL run (SFT or DPO). Names follow TRL's SFTConfig / DPOConfig."""

    name: str = "default"
    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (tiny CPU runs)
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    # The compute dtype (autocast): auto (bf16 where the hardware has it, else fp32) | bf16 | fp16 | fp32. Trainable
    # weights and the optimizer state stay fp32 under every setting (master weights; see magpie_exp.stages.train).
    precision: str = "auto"
    save_dtype: str = "fp32"  # dtype of the saved model/: fp32 | bf16 | fp16 (stats.json says what rounding kept)
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 50  # checkpoints (the unit of resume)
    save_total_limit: int = 2
    keep_checkpoints: bool = False  # false: checkpoints (weights + optimizer state) are deleted once the model is saved
    lora: LoraSpec = field(default_factory=LoraSpec)
    extra: dict[str, Any] = field(default_factory=dict)  # passed verbatim to SFTConfig / DPOConfig


@dataclass
class SFTSpec(TrainSpec):
    base_model: str = "embedded:gemma3-270m"  # the base model to fine-tune
    chat_template: str | None = "gemma"  # built-in: llama3 | gemma | chatml, a .jinja path, or null = the model's own
    packing: bool = True
    assistant_only_loss: bool = True  # loss on assistant turns only (needs {% generation %} markers)
    include_reasoning: bool = False  # train on "<think>\n{trace}\n</think>\n\n{answer}" where a record has a trace


@dataclass
class DPOSpec(TrainSpec):
    init_from: str | None = None  # the model to start from; null = this config's SFT output
    beta: float = 0.1
    loss_type: str = "sigmoid"
    precompute_ref_log_probs: bool = True  # one pass at the start instead of a second model in memory


@dataclass
class LmEvalConfig:
    tasks: list[str] = field(default_factory=list)  # any task or group lm-eval knows (gsm8k, mmlu_redux_generative, ...)
    model: str = "hf"  # lm-eval's model type: hf | vllm
    model_args: dict[str, Any] = field(default_factory=dict)  # added to pretrained=<model>
    num_fewshot: int | None = None  # null = each task's default
    batch_size: int = 8
    apply_chat_template: bool = True
    limit: int | None = None  # null = evaluation.limit
    local_data: dict[str, str] = field(default_factory=dict)  # task -> local data file/folder (hub unreachable)


@dataclass
class EvaluationConfig:
    # null = this config's trained model (trainer=sft|dpo); "generator" = the generator; or a folder / embedded:<name> / hub id
    model: str | None = None
    label: str | None = None  # name in result tables; default derived from the model
    benchmarks: list[str] = field(default_factory=lambda: ["ifeval", "mt_bench"])  # + alpaca_eval arena_hard lm_eval
    limit: int | None = None  # first N items of every benchmark (quick runs)
    sample: int | None = None  # a seeded sample of N items (of the first `limit`, when both are set)
    data_dir: str | None = None  # local copies of the eval sets (<dir>/<benchmark>/...); null = shipped or downloaded
    max_tokens: int = 1024  # answer length of the evaluated model
    max_model_len: int = 4096
    judge: GeneratorConfig | None = None  # judge model for mt_bench, alpaca_eval, arena_hard
    judge_engine: EngineConfig | None = None  # null = the engine group; e.g. engine@evaluation.judge_engine=openai
    model_engine: EngineConfig | None = None  # the evaluated model's engine; null = the engine group
    eager: bool = False  # vllm: the evaluated model's engine skips compilation (short evaluations: benchmarks/bench_eager.py)
    judge_max_tokens: int = 512
    reask: bool = True  # a reply without a verdict is asked once more for the verdict alone (constrained where possible)
    bootstrap_rounds: int = 100  # arena_hard confidence interval
    batch_size: int = 256  # items per engine call (and per resumable shard)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)


@dataclass
class PipelineConfig:
    # generate tag curate pair sft dpo evaluate, in this order; a subset runs part of the loop
    stages: list[str] = field(default_factory=lambda: ["generate", "tag", "curate", "pair", "sft", "dpo", "evaluate"])
    evaluate_models: list[str] = field(default_factory=lambda: ["sft", "dpo"])  # + generator (the instruct baseline)
    objective: str | None = None  # a score returned to Hydra sweepers (Optuna), e.g. dpo/mt_bench/score
    report: bool = True  # report.html in the run folder (and index.html in a sweep folder)


@dataclass
class TrackerConfig:
    type: str = "wandb"  # wandb | none
    mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline | online | offline
    project: str = "magpie-exp"
    entity: str | None = None
    group: str | None = None  # default: experiment_name, so W&B's group-by compares the runs of one experiment
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # default <paths.outputs>/wandb
    sample_rows: int = 20  # rows in dataset and evaluation sample tables


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # stage folders go to <outputs>/stages/<stage>/<config hash>
    cache_dir: str = MISSING  # converted embedded models, vLLM/inductor caches


@dataclass
class InspectConfig:
    """``stage=inspect``: what the generator's template gives Magpie, from the tokenizer alone."""

    json: bool = False  # print one JSON object on stdout instead of the text report


@dataclass
class PublishConfig:
    """``stage=publish``: a stage's export (card + Parquet) to the Hugging Face Hub (magpie_exp/publish.py)."""

    repo_id: str | None = None  # <org or user>/<name>
    dry_run: bool = False  # list the files and check the card; no network
    private: bool = True  # a new repository is private until you say otherwise
    token_env: str = "HF_TOKEN"  # the environment variable holding the write token (never the token itself)
    commit_message: str | None = None


@dataclass
class MagpieConfig:
    stage: str = "pipeline"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    response_generator: GeneratorConfig | None = None  # default: the instruction generator
    engine: EngineConfig = field(default_factory=EngineConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    tag: TagConfig = field(default_factory=TagConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    trainer: str = "sft"  # stage=train runs this: sft | dpo
    sft: SFTSpec = field(default_factory=SFTSpec)
    dpo: DPOSpec = field(default_factory=DPOSpec)
    input: str | None = None  # a stage's input: a stage folder or a JSONL file; null = this config's upstream stage
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment_name: str = "default"  # set by conf/experiment/*; the tracker's group
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    force: list[str] = field(default_factory=list)  # pipeline stages to re-run although their output is cached
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    verbose: bool = False  # false: the console shows the project's progress and summary, other logs go to the log file


def as_plain(obj: Any) -> Any:
    """Dataclass config -> plain JSON-able dict."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)
