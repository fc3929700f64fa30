"""magpie-exp: Magpie alignment-data experiments from Hydra configs (generate -> tag -> curate -> pair -> train -> evaluate)."""

__version__ = "0.1.0"
