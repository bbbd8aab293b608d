"""results.md of the GPU check from its results.json: stage statuses, side-by-side rows, goals.

Our numbers beside nnU-Net's from the same run and the H100 reference numbers issue 18 quotes;
the goals (profiles.GOALS) are read off the numbers with met / not met / "-" (not measured).
"""

from __future__ import annotations

from profiles import GOALS, H100_REFERENCE


def cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def _metrics(results: dict, stage: str) -> dict:
    return results["stages"].get(stage, {}).get("metrics") or {}


def goals(results: dict) -> list[dict]:
    """Each goal of issue 18: target, measured value, met (None when not measured)."""
    train, augment = _metrics(results, "train"), _metrics(results, "augment")
    ours, theirs = _metrics(results, "predict"), _metrics(results, "nnunet_predict")
    rows = []
    ms = train.get("ms_per_it")
    rows.append(
        {
            "goal": f"training end to end, {train.get('workers', 2)} loader workers (ms/it)",
            "target": f"<= {GOALS['ms_per_it_2_workers']:g}",
            "measured": ms,
            "met": None if ms is None else ms <= GOALS["ms_per_it_2_workers"],
        }
    )
    for key, value in augment.items():
        rows.append(
            {
                "goal": f"augmentation per batch, {key.removeprefix('ms_per_batch_')} (ms)",
                "target": f"<= {GOALS['augment_ms_per_batch']:g}",
                "measured": value,
                "met": value <= GOALS["augment_ms_per_batch"],
            }
        )
    base, against = theirs.get("whole_command_s"), "nnU-Net, this run"
    if base is None and ours.get("cases") == 2:
        base, against = H100_REFERENCE["predict_2_ct_cases_tta_s"], "nnU-Net on the H100 of issue 18"
    speedup = base / ours["whole_command_s"] if base and ours.get("whole_command_s") else None
    rows.append(
        {
            "goal": f"predict whole command, TTA, speed-up over {against}",
            "target": f">= {GOALS['predict_speedup']:g}x",
            "measured": speedup,
            "met": None if speedup is None else speedup >= GOALS["predict_speedup"],
        }
    )
    for r in _metrics(results, "memory").get("rows", []):
        share = r["measured"] / (r["budget_gb"] * 1e9) if r.get("measured") is not None else None
        rows.append(
            {
                "goal": f"memory model at {r['budget_gb']:g} GB: measured peak / budget",
                "target": f"{GOALS['memory_min_share']:g} .. 1",
                "measured": share,
                "met": None if share is None else GOALS["memory_min_share"] <= share <= 1.0,
            }
        )
    ratio = train.get("peak_over_predicted")
    rows.append(
        {
            "goal": "training peak / the plan's prediction (compiled run)",
            "target": "<= 1",
            "measured": ratio,
            "met": None if ratio is None else ratio <= 1.0,
        }
    )
    return rows


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]


def render(results: dict) -> str:
    info, prof = results.get("info", {}), results["profile"]
    dry = results["mode"] == "dry"
    lines = [f"# voxseg GPU check ({'--dry-run' if dry else '--run'})", ""]
    if dry:
        lines += [
            ("Dry run on the CPU at tiny sizes: it checks that the kit runs end to end; no number below is a measurement."),
            "",
        ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    wall = f", used {results['wall_s']:.0f} s" if "wall_s" in results else " (still running)"
    lines += [f"- budget: {results['budget_s']:g} s{wall}", "", "## Stages", ""]
    lines += _table(["stage", "status", "s"], [[name, s["status"], s.get("seconds")] for name, s in results["stages"].items()])
    notes = [f"- {name}: {n}" for name, s in results["stages"].items() for n in s.get("notes", [])]
    lines += ([""] + notes) if notes else []
    lines += _training(results, prof) + _augment(results) + _memory(results) + _predict(results) + _ddp(results)
    lines += ["", "## Goals (issue 18)", ""]
    lines += _table(
        ["goal", "target", "measured", "met"], [[g["goal"], g["target"], g["measured"], g["met"]] for g in goals(results)]
    )
    return "\n".join(lines) + "\n"


def _training(results: dict, prof: dict) -> list[str]:
    ours, theirs, ref = _metrics(results, "train"), _metrics(results, "nnunet_train"), H100_REFERENCE
    patch = "x".join(map(str, prof["patch"]))
    rows = [
        [
            "end to end ms/it",
            ours.get("ms_per_it"),
            theirs.get("ms_per_it"),
            f"{ref['ms_per_it_2_workers']:g} (2 workers), {ref['ms_per_it_12_workers']:g} (12)",
        ],
        [
            "step ms (no data wait)",
            ours.get("step_ms"),
            theirs.get("step_ms"),
            f"{ref['step_ms_compile']:g} compile, {ref['step_ms_eager_fp16']:g} eager fp16",
        ],
        ["data-wait share", ours.get("data_wait_share"), theirs.get("data_wait_share"), "-"],
        ["peak GPU MB", ours.get("peak_gpu_mb"), theirs.get("peak_gpu_mb"), "-"],
        ["peak GPU MB the plan predicts", ours.get("predicted_gpu_mb"), "-", "-"],
        ["warm-up s (compile)", ours.get("warmup_s"), "-", "-"],
        [
            "precision / compile / augmentation",
            f"{ours.get('precision', '-')} / {ours.get('compile', '-')} / {ours.get('augmentation_where', '-')}",
            f"its default / {'on' if prof['nnunet_compile'] else 'off'} / CPU workers",
            "fp16 or bf16, patch 88x160x128",
        ],
        [
            "steps (warm-up + timed)",
            f"{prof['warmup']} + {prof['iterations']}",
            f"{prof['nnunet_warmup']} + {prof['nnunet_iterations']}",
            "-",
        ],
    ]
    return ["", f"## Training: patch {patch}, batch {prof['batch']}, {prof['workers']} loader workers", ""] + _table(
        ["metric", "voxseg", "nnU-Net 2.8.1", "H100 reference (issue 18)"], rows
    )


def _augment(results: dict) -> list[str]:
    m = _metrics(results, "augment")
    if not m:
        return []
    rows = [[k.removeprefix("ms_per_batch_"), v] for k, v in m.items()]
    return ["", "## Augmentation on the device (default preset, batch 2)", ""] + _table(["patch", "ms/batch"], rows)


def _memory(results: dict) -> list[str]:
    m = _metrics(results, "memory")
    if not m.get("rows"):
        return []
    rows = [
        [
            r["budget_gb"],
            "x".join(map(str, r["patch"])),
            r["batch"],
            r["predicted"] / 1e9,
            None if r["measured"] is None else r["measured"] / 1e9,
            None if r["measured"] is None else r["measured"] / (r["budget_gb"] * 1e9),
            None if r["measured"] is None else r["measured"] / r["predicted"],
        ]
        for r in m["rows"]
    ]
    out = ["", f"## Memory model ({m.get('problem')}; eager bf16 steps)", ""]
    out += _table(["budget GB", "patch", "batch", "predicted GB", "measured GB", "measured/budget", "measured/predicted"], rows)
    if "refit_activation_scale" in m:
        out += [
            "",
            (
                f"Refit on these rows: activation_scale={m['refit_activation_scale']:.3f}, "
                f"constant_bytes={m['refit_constant_bytes'] / 1e6:.0f} MB (voxseg.planning.memory.CALIBRATED)."
            ),
        ]
    return out


def _predict(results: dict) -> list[str]:
    ours, theirs = _metrics(results, "predict"), _metrics(results, "nnunet_predict")
    if not ours and not theirs:
        return []
    shape = _metrics(results, "data").get("ct_shape", "?")
    ref = H100_REFERENCE["predict_2_ct_cases_tta_s"]
    rows = [
        ["whole command s", ours.get("whole_command_s"), theirs.get("whole_command_s"), f"{ref:g} (2 cases)"],
        ["s per case", ours.get("s_per_case"), theirs.get("s_per_case"), f"{ref / 2:g}"],
        ["peak GPU MB", ours.get("peak_gpu_mb"), "-", "-"],
        ["peak RSS MB", ours.get("peak_rss_mb"), theirs.get("peak_rss_mb"), "-"],
    ]
    out = ["", f"## Predict: {ours.get('cases', theirs.get('cases', 2))} CT-sized volumes ({shape}), TTA on", ""]
    out += _table(["metric", "voxseg", "nnU-Net 2.8.1", "H100 reference (issue 18)"], rows)
    stages = ours.get("stage_s") or {}
    if stages:
        out += [
            "",
            (
                "voxseg per stage, seconds summed over the cases (reading, preprocessing and writing run in "
                "background threads beside the network, so they overlap):"
            ),
            "",
        ]
        out += _table(list(stages), [list(stages.values())])
    return out


def _ddp(results: dict) -> list[str]:
    m = _metrics(results, "ddp")
    if not m:
        return []
    return ["", "## DDP (torchrun)", ""] + _table(
        ["ranks", "backend", "ms/it", "command s"], [[m.get("ranks"), m.get("backend"), m.get("ms_per_it"), m.get("wall_s")]]
    )
