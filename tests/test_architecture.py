"""The shape of the package, checked on every run: its import graph (function-local imports included, imports
under ``if TYPE_CHECKING:`` and a submodule's import of its own package left out) has no cycle; the config imports
no stage, engine or step; no stage imports another; below the stages code takes its section of the config; the
registry names every step; nothing imports the CLI or, except the CLI, the pipeline; the README's tree names every
module."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "magpie_exp"
STAGE_MODULES = {f"magpie_exp.stages.{name}" for name in ("generate", "tag", "curate", "pair", "train", "evaluate")}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                 if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found |= {n for n in names if n in modules}
    me = _module(path)
    # a package's __init__ runs whenever one of its submodules is imported: not an edge to the package's face
    return {m for m in found if m != me and not me.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module(f) for f in files}
    return {_module(f): _imports(f, modules) for f in files}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(graph()) == []


def test_the_checker_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_imports_no_stage_and_nothing_imports_the_cli_or_the_pipeline() -> None:
    edges = graph()
    config = {m: deps for m, deps in edges.items() if m == "magpie_exp.config" or m.startswith("magpie_exp.config.")}
    assert len(config) >= 4
    # the config imports only itself and two leaf modules (the sanitizer's family names, the export formats)
    outside = {d for deps in config.values() for d in deps if not d.startswith("magpie_exp.config")}
    assert outside <= {"magpie_exp.sanitize", "magpie_exp.records"}, outside
    assert not edges["magpie_exp.sanitize"] and not edges["magpie_exp.records"] - {"magpie_exp.files"}
    # the Python entry point (magpie_exp.run) is the command's twin: it composes and runs through the CLI's functions
    assert [m for m, deps in edges.items() if "magpie_exp.cli" in deps] == ["magpie_exp.api"]
    assert [m for m, deps in edges.items() if "magpie_exp.pipeline" in deps] == ["magpie_exp.cli"]


def test_no_stage_imports_another_stage() -> None:
    """Stages are siblings: a stage finds its input's folder through the table of cache keys, never by importing
    the stage upstream of it."""
    edges = graph()
    assert STAGE_MODULES <= set(edges)
    assert {m: sorted(edges[m] & STAGE_MODULES) for m in STAGE_MODULES if edges[m] & STAGE_MODULES} == {}


def test_below_the_stages_code_takes_its_section_of_the_config() -> None:
    """Only the config itself, the stages (and inspect and publish), the pipeline, the CLI, the step runner, the cross-stage
    checks and the engine pool (which knows which models a config shares) see the whole ``MagpieConfig``; taggers,
    chat models, rules, evaluation and training take their section."""
    allowed = {"magpie_exp.cli", "magpie_exp.pipeline", "magpie_exp.runner", "magpie_exp.checks",
               "magpie_exp.inspection", "magpie_exp.publish", "magpie_exp.engines.pool"}
    seen = {_module(p) for p in PACKAGE.rglob("*.py") if "MagpieConfig" in p.read_text()}
    below = {m for m in seen if not m.startswith(("magpie_exp.config", "magpie_exp.stages"))}
    assert below - allowed == set(), sorted(below - allowed)


def test_every_stage_finishes_its_folder_through_the_one_completion_rule() -> None:
    """Each stage module marks its folder finished with ``common.finish`` and tests for a cache hit with
    ``common.finished`` (stats file, then the manifest's flag); none writes its stats file itself."""
    import ast

    for module in sorted(STAGE_MODULES):
        tree = ast.parse((PACKAGE / (module.split(".", 1)[1].replace(".", "/") + ".py")).read_text())
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert {"finish", "finished"} <= called, module
        writes = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in ("stats.json", "scores.json")]
        assert len(writes) <= 1, (module, "names its stats file more than once")


def test_the_registry_names_every_step_once_in_the_pipeline_order() -> None:
    from magpie_exp.config import PIPELINE_STAGES, STAGES
    from magpie_exp.stages import STEPS

    assert tuple(STEPS) == PIPELINE_STAGES
    assert {s.stage for s in STEPS.values()} == set(STAGES) - {"pipeline", "inspect", "publish"}  # reports, no folder
    assert {s.stage for s in STEPS.values()} == {m.rsplit(".", 1)[1] for m in STAGE_MODULES}


def test_schema_defaults_agree_with_config_yaml() -> None:
    """One source of truth: a value set in conf/config.yaml is the schema's default too (a MagpieConfig built in
    Python is the command's default run)."""
    import yaml
    from omegaconf import OmegaConf

    from magpie_exp.config import MagpieConfig

    raw = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    for key in ("defaults", "hydra"):
        raw.pop(key)
    schema = OmegaConf.to_container(OmegaConf.structured(MagpieConfig), resolve=False)
    disagree = []

    def walk(yaml_value, schema_value, path: str) -> None:
        if isinstance(yaml_value, dict):
            for k, v in yaml_value.items():
                assert k in schema_value, f"{path}{k} is in config.yaml but not in the schema"
                walk(v, schema_value[k], f"{path}{k}.")
        elif not (isinstance(yaml_value, str) and yaml_value.startswith("${")) and yaml_value != schema_value:
            disagree.append(f"{path[:-1]}: yaml {yaml_value!r}, schema {schema_value!r}")

    walk(raw, schema, "")
    assert disagree == []


def test_the_readme_tree_lists_every_module_and_nothing_else() -> None:
    """The README's annotated tree names every module of the package and every benchmark script, each once, and
    no file that does not exist."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Tree", 1)[1].split("```", 2)[1]
    listed: dict[str, list[str]] = {"magpie_exp": [], "benchmarks": []}
    folder = None
    for line in block.splitlines():
        if line and not line.startswith(" "):
            folder = line.split()[0].rstrip("/")
        elif folder in listed and line.startswith("  ") and line.split()[0].endswith(".py"):
            listed[folder].append(line.split()[0])
    for name, entries in listed.items():
        files = sorted(p.relative_to(REPO / name).as_posix() for p in (REPO / name).rglob("*.py")
                       if p.name != "__init__.py" or p.parent != REPO / name)
        assert sorted(entries) == files, name
