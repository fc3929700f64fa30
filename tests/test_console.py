"""The quiet console (magpie_exp/console.py): the project's lines and progress on the terminal, everything else
(library loggers, warnings, C-level writes, child processes) in the run's log file; progress views that move per
finished request; the pipeline's closing summary. The real command's console is checked in test_pipeline.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from magpie_exp.console import Progress, duration, tick

SESSION = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from magpie_exp.console import session
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger().addHandler(logging.FileHandler(sys.argv[1]))
    with session(Path(sys.argv[1]), verbose=sys.argv[2] == "1"):
        logging.getLogger("magpie_exp.stages.generate").info("generate: 4 records")
        logging.getLogger("vllm.engine").info("vllm engine config dump")
        logging.getLogger("transformers.trainer").warning("a transformers warning")
        logging.getLogger("faiss.loader").error("a library error")
        warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
        print("a print to stdout")
        os.write(2, b"a C-level write to fd 2\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('a child on stdout'); print('a child on stderr', file=sys.stderr)"])
        logging.getLogger("magpie_exp").error("generate.count: an error of ours")
    print("stdout after the session")
    logging.getLogger("magpie_exp").info("a line after the session")
""")
THIRD_PARTY = ["vllm engine config dump", "a transformers warning", "a deprecation", "a print to stdout",
               "a C-level write to fd 2", "a child on stdout", "a child on stderr"]


def _session(tmp_path: Path, verbose: bool) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "run.log"
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    out = subprocess.run([sys.executable, "-W", "always", str(script), str(log), "1" if verbose else "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out, log.read_text()


def test_a_quiet_session_puts_everything_but_our_lines_in_the_log_file(tmp_path: Path) -> None:
    out, log = _session(tmp_path, verbose=False)
    console = out.stdout + out.stderr
    for text in THIRD_PARTY:
        assert text not in console, text
        assert text in log, text
    # ours (and any ERROR) on the console, short: 'HH:MM:SS message'; and in the log file too
    lines = out.stderr.splitlines()
    assert any(line.endswith(" generate: 4 records") and line[2] == ":" for line in lines), lines
    assert any(line.endswith("ERROR generate.count: an error of ours") for line in lines), lines
    assert any(line.endswith("ERROR a library error") for line in lines), lines
    assert "generate: 4 records" in log and "generate.count: an error of ours" in log
    # everything is put back when the session ends
    assert out.stdout == "stdout after the session\n" and "a line after the session" in out.stderr


def test_verbose_shows_everything_as_before(tmp_path: Path) -> None:
    out, _ = _session(tmp_path, verbose=True)
    for text in THIRD_PARTY:
        assert text in out.stdout + out.stderr, text


def test_progress_moves_per_request_and_is_exact_at_each_shard() -> None:
    with Progress("generate", total=10, enabled=False, per_record=2) as bar:
        bar.expect(4)
        tick(3)  # three answers of two per record: 1.5 records
        assert bar.value == pytest.approx(1.5) and bar.requests == 3
        tick(20)  # never past the records in hand
        assert bar.value == 4
        bar.done(3)  # the shard had 3 records (one dropped): the truth wins
        assert bar.value == 3
        bar.expect(6)
        tick(2)
        assert bar.value == 4
        bar.done(6)
        assert bar.value == 9
    tick(5)  # nobody listening: nothing happens
    assert bar.value == 9


def test_engines_tick_per_finished_completion() -> None:
    from conftest import schema
    from magpie_exp.engines import Request, SamplingSpec
    from magpie_exp.engines.fake_engine import FakeEngine
    from magpie_exp.generators import load_side

    cfg = schema()
    tok = load_side("generator", cfg.generator, Path(cfg.paths.cache_dir)).tokenizer
    engine = FakeEngine(tok, lambda prompt, spec, k: "an answer")
    ids = tok.encode("a question", add_special_tokens=False)
    with Progress("pair", total=2, enabled=False, per_record=4) as bar:
        bar.expect(2)
        engine.generate([Request(ids, SamplingSpec(n=2, max_tokens=8)), Request(ids, SamplingSpec(n=2, max_tokens=8))])
        assert bar.requests == 4 and bar.value == 1


def test_the_closing_summary_says_what_each_step_made_kept_and_dropped() -> None:
    from magpie_exp.pipeline import StepRecord, summary

    records = [
        StepRecord("generate", "/o/g", False, 256.2, {"records": 48, "dropped": {"empty_response": 2}}),
        StepRecord("tag", "/o/t", True, 0.1, {"records": 48, "failures": {"off_label": 1}}),
        StepRecord("curate", "/o/c", False, 1.0, {"kept": 30, "input_records": 48,
                                                   "dropped": {"input_quality": 12, "near_dup": 6}}),
        StepRecord("pair", "/o/p", False, 120, {"pairs": 14, "input_records": 30, "dropped": {"tie": 16}}),
        StepRecord("sft", "/o/s", False, 265, {"steps": 12, "rows": 30, "final_loss": 1.23456}),
        StepRecord("evaluate:sft", "/o/e", False, 3725, {"benchmarks": {"ifeval": {"prompt_level_strict_acc": 0.25},
                                                                         "mt_bench": {"score": 3.5}}}),
    ]
    text = summary(records, 4400, Path("/o/run/report.html"))
    lines = text.splitlines()
    assert lines[0] == "done in 1h13m; report: /o/run/report.html"
    assert "4m16s" in lines[1] and "48 records; dropped 2 (empty_response 2)" in lines[1]
    assert "cached" in lines[2] and "tagger failures 1 (off_label 1)" in lines[2]
    assert "kept 30 of 48; dropped input_quality 12, near_dup 6" in lines[3]
    assert "14 pairs from 30 records; dropped tie 16" in lines[4]
    assert "12 steps on 30 rows, final loss 1.23" in lines[5]
    assert "IFEval prompt strict 0.25, MT-Bench (1-10) 3.5" in lines[6] and "1h02m" in lines[6]
    assert [duration(s) for s in (0.4, 59.6, 61, 3600)] == ["0s", "1m00s", "1m01s", "1h00m"]
    json.dumps(text)
