"""Value checks: what the schema's types cannot say (ranges, names from a fixed vocabulary, keys that must agree),
each raising ``ConfigError`` with one line naming the key, the value and the fix."""

from __future__ import annotations

import re

from magpie_exp.config.schema import ConfigError, EngineConfig, ExecutorConfig, GeneratorConfig, MagpieConfig

STAGES = ("pipeline", "generate", "tag", "curate", "pair", "train", "evaluate", "inspect", "publish")
PIPELINE_STAGES = ("generate", "tag", "curate", "pair", "sft", "dpo", "evaluate")
TAGGERS = ("length", "language", "quality", "difficulty", "task_category", "judge_score", "safety", "reward",
           "base_reward", "embedding", "decontam")
JUDGE_TAGGERS = ("quality", "difficulty", "task_category", "judge_score")
ENGINES = ("vllm", "hf", "openai")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what an environment variable's name looks like
DTYPES = ("bfloat16", "float16", "float32", "auto")


def need(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``: every check here and in the stages' cross-key checks."""
    if not ok:
        raise ConfigError(message)


def _validate_generator(prefix: str, gen: GeneratorConfig) -> None:
    from magpie_exp.sanitize import FAMILIES

    need(gen.sanitize is None or gen.sanitize in FAMILIES,
           f"{prefix}.sanitize must be one of {', '.join(FAMILIES)} or null; got {gen.sanitize!r}")
    ins, res = gen.instruction, gen.response
    for key, value in (("instruction.temperature", ins.temperature), ("response.temperature", res.temperature)):
        need(value >= 0, f"{prefix}.{key} must be >= 0; got {value}")
    for key, value in (("instruction.top_p", ins.top_p), ("response.top_p", res.top_p)):
        need(0 < value <= 1, f"{prefix}.{key} must be in (0, 1]; got {value}")
    for key, value in (("instruction.max_tokens", ins.max_tokens), ("response.max_tokens", res.max_tokens)):
        need(value >= 1, f"{prefix}.{key} must be >= 1; got {value}")
    need(gen.tensor_parallel_size >= 1, f"{prefix}.tensor_parallel_size must be >= 1; got {gen.tensor_parallel_size}")
    need(gen.max_model_len >= 16, f"{prefix}.max_model_len must be >= 16; got {gen.max_model_len}")
    need(gen.reasoning in ("default", "on", "off"), f"{prefix}.reasoning must be default, on or off; got {gen.reasoning!r}"
           + (" (in YAML quote it: reasoning: \"off\"; a bare on/off is read as a boolean)" if gen.reasoning in ("True", "False") else ""))
    formats = ("auto", "none", "think", "harmony", "gemma4")  # magpie_exp.reasoning.FORMATS
    need(gen.reasoning_format in formats,
           f"{prefix}.reasoning_format must be one of {', '.join(formats)}; got {gen.reasoning_format!r}")
    import datetime

    try:
        datetime.date.fromisoformat(str(gen.template_date))
    except ValueError:
        raise ConfigError(f"{prefix}.template_date must be a date like 2026-01-01; got {gen.template_date!r}") from None


def validate_engine(prefix: str, eng: EngineConfig) -> None:
    need(eng.type in ENGINES, f"{prefix}.type must be one of {', '.join(ENGINES)}; got {eng.type!r}")
    need(eng.dtype in DTYPES, f"{prefix}.dtype must be one of {', '.join(DTYPES)}; got {eng.dtype!r}")
    need(eng.batch_size >= 1, f"{prefix}.batch_size must be >= 1; got {eng.batch_size}")
    need(eng.max_concurrency >= 1, f"{prefix}.max_concurrency must be >= 1; got {eng.max_concurrency}")
    need(eng.max_retries >= 0, f"{prefix}.max_retries must be >= 0; got {eng.max_retries}")
    need(eng.type != "openai" or bool(eng.base_urls),
           f"{prefix}.base_urls is empty; give the servers, e.g. '{prefix}.base_urls=[http://127.0.0.1:8000]'")
    need(eng.api in ("completions", "chat"), f"{prefix}.api must be completions or chat; got {eng.api!r}")
    need(eng.api == "completions" or eng.type == "openai",
           f"{prefix}.api=chat needs {prefix}.type=openai (an OpenAI-compatible endpoint); got type {eng.type!r}")
    need(eng.api_key_env is None or bool(ENV_NAME.match(eng.api_key_env)),
           f"{prefix}.api_key_env must name an environment variable (letters, digits, _), e.g. OPENAI_API_KEY; the "
           "key itself goes in that variable, never in a config")


EXECUTORS = ("local", "ray")


def validate_executor(ex: ExecutorConfig, engine: EngineConfig) -> None:
    need(ex.type in EXECUTORS, f"executor.type must be one of {', '.join(EXECUTORS)}; got {ex.type!r}")
    if ex.type != "ray":
        return
    need(ex.workers is None or ex.workers >= 1, f"executor.workers must be >= 1 or null (as many as fit); got {ex.workers}")
    need(ex.cpus_per_worker > 0, f"executor.cpus_per_worker must be > 0; got {ex.cpus_per_worker}")
    need(ex.gpus_per_worker is None or ex.gpus_per_worker >= 0,
           f"executor.gpus_per_worker must be >= 0 or null (the model's tensor_parallel_size); got {ex.gpus_per_worker}")
    need(ex.chunks_per_worker >= 1, f"executor.chunks_per_worker must be >= 1; got {ex.chunks_per_worker}")
    need(ex.max_retries >= 0, f"executor.max_retries must be >= 0; got {ex.max_retries}")
    need(ex.max_restarts >= 0, f"executor.max_restarts must be >= 0; got {ex.max_restarts}")
    need(ex.object_store_mib >= 64, f"executor.object_store_mib must be >= 64; got {ex.object_store_mib}")
    need(engine.type != "openai",
           "executor=ray runs in-process engines (engine=vllm or hf) as Ray actors; engine.type=openai already sends "
           "its requests to servers: use executor=local, or engine=vllm to run the model on the Ray cluster")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("executor.type=ray needs Ray, which is not installed; run `pip install 'magpie-exp[ray]'` "
                          "or use executor=local") from None


def validate(cfg: MagpieConfig) -> MagpieConfig:
    """Check values the schema's types cannot; raise ``ConfigError`` naming key, value and fix."""
    need(cfg.stage in STAGES, f"stage must be one of {', '.join(STAGES)}; got {cfg.stage!r}")
    need(not (cfg.stage == "generate" and cfg.input),
           "input is set but stage=generate makes data from nothing and reads no input; drop input=, or run the stage "
           "that reads it (stage=tag|curate|pair|train|evaluate, or the pipeline)")
    need(cfg.stage == "pipeline" or not cfg.force,
           f"force={list(cfg.force)} re-runs pipeline steps, but stage={cfg.stage} runs one stage; run the pipeline "
           "(pipeline.stages=[...]) with force, or delete that stage's folder")
    _validate_generator("generator", cfg.generator)
    if cfg.response_generator is not None:
        _validate_generator("response_generator", cfg.response_generator)
    validate_engine("engine", cfg.engine)
    validate_executor(cfg.executor, cfg.engine)
    steps = cfg.pipeline.stages if cfg.stage == "pipeline" else [cfg.stage]
    raw = [s for s in steps if s in ("generate", "pair")]
    need(cfg.engine.api == "completions" or not raw,
           f"engine.api=chat cannot run {raw[0] if raw else ''}: Magpie needs raw completions from a pre-query template; "
           "use engine.api=completions (vLLM servers), or the chat API only for judges (engine@evaluation.judge_engine=openai-chat)")
    g = cfg.generate
    need(g.samples_per_request >= 1, f"generate.samples_per_request must be >= 1; got {g.samples_per_request}")
    need(g.shard_size >= 1, f"generate.shard_size must be >= 1; got {g.shard_size}")
    need(g.engine_batch >= 1, f"generate.engine_batch must be >= 1 (records per engine call); got {g.engine_batch}")
    need(g.waves_in_flight >= 1, f"generate.waves_in_flight must be >= 1 (waves drawn at once; 1 = one at a time); "
                                 f"got {g.waves_in_flight}")
    need(g.oversample >= 1.0, f"generate.oversample must be >= 1.0; got {g.oversample}")
    need(g.max_rounds >= 1, f"generate.max_rounds must be >= 1; got {g.max_rounds}")
    if g.grid:
        for i, cell in enumerate(g.grid):
            need(cell.count >= 1, f"generate.grid[{i}].count must be >= 1; got {cell.count}")
            need(cell.temperature >= 0, f"generate.grid[{i}].temperature must be >= 0; got {cell.temperature}")
            need(0 < cell.top_p <= 1, f"generate.grid[{i}].top_p must be in (0, 1]; got {cell.top_p}")
        total = sum(cell.count for cell in g.grid)
        need(g.count is None or g.count == total,
               f"generate.count ({g.count}) disagrees with the sum of generate.grid counts ({total}); "
               "set generate.count=null or drop the grid")
    else:
        need(g.count is not None and g.count >= 1,
               f"generate.count must be >= 1 (or give generate.grid); got {g.count}")
    for i, sp in enumerate(g.system_prompts):
        need(sp.weight > 0, f"generate.system_prompts[{i}].weight must be > 0; got {sp.weight}")
        need(sp.text is None or bool(sp.text.strip()),
               f"generate.system_prompts[{i}].text is empty; give the system prompt text, or null for the template default")
        need(sp.prefill is None or bool(sp.prefill.strip()),
               f"generate.system_prompts[{i}].prefill is empty; give the first words of the user turn, or null")
    mt = g.multi_turn
    need(mt.num_turns >= 1, f"generate.multi_turn.num_turns must be >= 1; got {mt.num_turns}")
    need(0 <= mt.fraction <= 1, f"generate.multi_turn.fraction must be in [0, 1]; got {mt.fraction}")
    from magpie_exp.records import EXPORT_FORMATS

    unknown = sorted(set(g.export) - set(EXPORT_FORMATS))
    need(not unknown, f"generate.export has unknown format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
    for key, gen in (("tag.judge", cfg.tag.judge), ("tag.guard", cfg.tag.guard), ("tag.base_model", cfg.tag.base_model)):
        if gen is not None:
            _validate_generator(key, gen)
    p = cfg.pair
    need(p.num_responses >= 2, f"pair.num_responses must be >= 2 (best vs worst needs two); got {p.num_responses}")
    need(p.temperature > 0, f"pair.temperature must be > 0 (greedy gives k identical answers); got {p.temperature}")
    need(0 < p.top_p <= 1, f"pair.top_p must be in (0, 1]; got {p.top_p}")
    need(p.min_margin >= 0, f"pair.min_margin must be >= 0; got {p.min_margin}")
    need(p.length_ratio >= 1, f"pair.length_ratio must be >= 1; got {p.length_ratio}")
    _validate_pipeline(cfg)
    return cfg


def _validate_pipeline(cfg: MagpieConfig) -> None:
    p = cfg.pipeline
    unknown = [s for s in p.stages if s not in PIPELINE_STAGES]
    need(not unknown, f"pipeline.stages has unknown stage(s) {unknown}; choose from {list(PIPELINE_STAGES)}")
    need(bool(p.stages), f"pipeline.stages is empty; choose from {list(PIPELINE_STAGES)}")
    order = [PIPELINE_STAGES.index(s) for s in p.stages]
    need(order == sorted(set(order)), f"pipeline.stages must keep the pipeline order {list(PIPELINE_STAGES)} "
                                        f"without repeats; got {p.stages}")
    bad = [m for m in p.evaluate_models if m not in ("sft", "dpo", "generator")]
    need(not bad and bool(p.evaluate_models),
           f"pipeline.evaluate_models must list sft, dpo and/or generator; got {p.evaluate_models}")
    unknown = [s for s in cfg.force if s not in PIPELINE_STAGES]
    need(not unknown, f"force has unknown stage(s) {unknown}; choose from {list(PIPELINE_STAGES)}")
    t = cfg.tracker
    need(t.type in ("wandb", "none"), f"tracker.type must be wandb or none; got {t.type!r}")
    need(t.mode in ("auto", "online", "offline"), f"tracker.mode must be auto, online or offline; got {t.mode!r}")
    need(t.sample_rows >= 0, f"tracker.sample_rows must be >= 0; got {t.sample_rows}")
    if t.type == "wandb" and t.mode == "online" and cfg.stage == "pipeline":
        import os
        from pathlib import Path

        netrc = Path.home() / ".netrc"
        logged_in = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="replace")
        need(bool(os.environ.get("WANDB_API_KEY")) or logged_in,
               "tracker.mode=online but no W&B key: set WANDB_API_KEY in the environment (or `wandb login`), or use "
               "tracker.mode=auto (offline without a key)")
