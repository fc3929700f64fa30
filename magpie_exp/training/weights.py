"""Saved model weights: cast a trained model folder to its save dtype, and say what training changed and what of
that the cast kept.

Used by the train stage after ``save_model`` (``magpie-exp stage=train sft.save_dtype=bf16``). Training keeps fp32
master weights, so the folder is first written in fp32; casting it to bf16 rounds each weight to 8 significant
bits, and an update smaller than half a step (about 1e-4 on a weight of 0.02, 4e-3 near 1) disappears. The report
compares, tensor by tensor, the trained weights and the cast weights with the starting model's (cast the same
way), so a saved model that lost what training did says so instead of passing for trained.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of ``folder`` that holds it."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    return where


def cast_and_compare(model_dir: Path, init_dir: Path | None, dtype: Any) -> dict[str, Any]:
    """Cast every floating-point tensor of ``model_dir``'s safetensors files to ``dtype`` (one file in memory at
    a time, each replaced atomically) and count, against ``init_dir``'s tensors of the same name and shape, the
    tensors and elements that training changed and those that still differ after the cast.

    The starting tensor goes through the same cast, so "changed after the cast" means the saved model differs
    from what saving the untrained model in ``dtype`` would give."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    init = _tensor_files(init_dir) if init_dir is not None and init_dir.is_dir() else {}
    totals = {"tensors": 0, "compared": 0, "changed_by_training": 0, "changed_in_saved": 0,
              "elements_changed_by_training": 0, "elements_changed_in_saved": 0}
    lost: list[str] = []
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def starting(name: str) -> Any:
            path = init.get(name)
            if path is None:
                return None
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            return handles[path].get_tensor(name)

        for path in sorted(model_dir.glob("*.safetensors")):
            out: dict[str, Any] = {}
            recast = False
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
                for name in handle.keys():
                    trained = handle.get_tensor(name)
                    cast = trained.to(dtype) if trained.is_floating_point() else trained
                    out[name] = cast
                    recast |= cast.dtype != trained.dtype
                    totals["tensors"] += 1
                    before = starting(name)
                    if before is None or before.shape != trained.shape or not trained.is_floating_point():
                        continue
                    totals["compared"] += 1
                    by_training = int((trained.float() != before.float()).sum())
                    in_saved = int((cast != before.to(dtype)).sum())
                    totals["elements_changed_by_training"] += by_training
                    totals["elements_changed_in_saved"] += in_saved
                    totals["changed_by_training"] += by_training > 0
                    totals["changed_in_saved"] += in_saved > 0
                    if by_training and not in_saved:
                        lost.append(name)
            if recast:
                tmp = path.with_name(path.name + ".tmp")
                save_file(out, str(tmp), metadata=metadata)
                os.replace(tmp, path)
            del out
    _set_config_dtype(model_dir, dtype)
    changed = totals["elements_changed_by_training"]
    return {"saved_dtype": str(dtype).removeprefix("torch."), **totals,
            "share_of_changes_kept": round(totals["elements_changed_in_saved"] / changed, 6) if changed else None,
            "tensors_whose_change_was_rounded_away": len(lost), "examples_rounded_away": lost[:10],
            "compared_with": str(init_dir) if init else None}


def _set_config_dtype(model_dir: Path, dtype: Any) -> None:
    path = model_dir / "config.json"
    if not path.exists():
        return
    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
    if config.get(key) != name:
        config[key] = name
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def warn_if_rounded_away(report: dict[str, Any], key: str) -> None:
    if report["tensors_whose_change_was_rounded_away"] or (report["share_of_changes_kept"] or 1.0) < 0.5:
        log.warning("%s: saved in %s, %d of %d tensors that training changed are identical to the starting model "
                    "after rounding, and %.1f%% of the changed weights kept a change; set %s.save_dtype=fp32 to keep "
                    "every update", key, report["saved_dtype"], report["tensors_whose_change_was_rounded_away"],
                    report["changed_by_training"], 100 * (report["share_of_changes_kept"] or 0.0), key)
