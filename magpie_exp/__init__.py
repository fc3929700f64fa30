"""magpie-exp: Magpie alignment-data experiments from Hydra configs (generate -> tag -> curate -> pair -> train -> evaluate)."""

__version__ = "0.1.0"


def run(*overrides: str, **kwargs):  # noqa: ANN201 - magpie_exp.api.RunResult (imported on use: this stays light)
    """Run a stage or the pipeline from Hydra overrides and get the folders and scores back (``magpie_exp.api``)."""
    from magpie_exp.api import run as _run

    return _run(*overrides, **kwargs)
