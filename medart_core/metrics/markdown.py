"""report.md: the report.json numbers as short tables a person can read."""

from __future__ import annotations


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _ci(interval) -> str:
    return f"[{_num(interval[0])}, {_num(interval[1])}]" if interval else "n/a"


def _kid(kid) -> str:
    return f"{_num(kid['mean'])} ± {_num(kid['std'])}" if kid else "n/a"


def render(report: dict) -> str:
    inputs = report["inputs"]
    lines = ["# Med-Art evaluation report", ""]
    for role in ("real", "synthetic", "training"):
        info = inputs.get(role)
        if info:
            split = f" (split {info['split']})" if info.get("split") else ""
            lines.append(f"- **{role}**: `{info['path']}`{split}, {info['n']} images, classes {info['classes'] or 'none'}")
    lines.append(f"- feature space: {report['settings'].get('feature_space') or 'n/a'}")
    lines.append("")
    if report.get("leakage"):
        lines += ["## Leakage between the held-out and training sets", ""]
        lines += [line if line.startswith(("-", " ")) else f"**{line}**" for line in report["leakage"]["summary"]]
        lines.append("")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    if report["skipped"]:
        lines += ["## Skipped", ""] + [f"- **{m}**: {why}" for m, why in report["skipped"].items()] + [""]

    if "fid" in report or "kid" in report:
        lines += ["## FID / KID (Inception-v3, torchmetrics)", "", "| metric | value | 95% CI / std | n real | n fake |",
                  "|---|---|---|---|---|"]
        if "fid" in report:
            fid = report["fid"]
            lines.append(f"| FID | {_num(fid['value'])} | {_ci(fid['ci95'])} | {fid['n_real']} | {fid['n_fake']} |")
        if "kid" in report:
            kid = report["kid"]
            lines.append(f"| KID | {_num(kid['mean'])} | ± {_num(kid['std'])} ({kid['subsets']} subsets of {kid['subset_size']}) | | |")
        lines.append("")

    if "dfd" in report:
        dfd = report["dfd"]
        lines += [f"## Frechet distance and KID in {dfd['feature_space']}", "",
                  "| class | n real | n fake | FD | FD 95% CI | KID mean ± std |", "|---|---|---|---|---|---|"]
        rows = [("all", dfd)] + list(dfd.get("per_class", {}).items())
        for label, row in rows:
            lines.append(f"| {label} | {row['n_real']} | {row['n_fake']} | {_num(row.get('fd'))} | {_ci(row.get('fd_ci95'))} "
                         f"| {_kid(row.get('kid'))} |")
        lines.append("")

    if "color" in report:
        color = report["color"]
        lines += ["## Colour statistics (0..1)", "",
                  "| class | channel | mean real | mean fake | std real | std fake | histogram W1 |", "|---|---|---|---|---|---|---|"]
        rows = [("all", color)] + list(color.get("per_class", {}).items())
        for label, row in rows:
            if "mean" not in row["real"] or "mean" not in row["synthetic"]:
                continue
            for channel in ("red", "green", "blue"):
                lines.append(f"| {label} | {channel} | {_num(row['real']['mean'][channel])} | {_num(row['synthetic']['mean'][channel])} "
                             f"| {_num(row['real']['std'][channel])} | {_num(row['synthetic']['std'][channel])} "
                             f"| {_num(row['distance']['histogram_wasserstein'][channel])} |")
        lines += ["", f"Colour distance (mean over channels of |Δmean| + |Δstd|): **{_num(color['distance'].get('distance'))}**", ""]

    if "conditional" in report:
        cond = report["conditional"]
        ceiling = cond.get("held_out_real") or {}
        lines += ["## Conditional accuracy (classifier trained on real images)", "",
                  f"Overall **{_num(cond['accuracy'])}** on {cond['n']} generated images; the same classifier on held-out "
                  f"real images: {_num(ceiling.get('accuracy'))} (the ceiling).", "", "| asked class | n | accuracy | predicted as |",
                  "|---|---|---|---|"]
        for label, row in cond["per_class"].items():
            confusion = ", ".join(f"{k}: {v}" for k, v in cond["confusion"].get(label, {}).items())
            lines.append(f"| {label} | {row['n']} | {_num(row['accuracy'])} | {confusion} |")
        lines.append("")

    if "classification" in report:
        cls = report["classification"]
        lines += ["## Downstream classification (tested on held-out real images)", "",
                  f"{cls['n_test']} test images, classes {cls['classes']}, seeds {cls['seeds']}, "
                  f"{cls['config']['steps']} steps per run.", "",
                  "| trained on | n train | accuracy (mean ± std) | macro-F1 (mean ± std) | per seed (acc / F1) |", "|---|---|---|---|---|"]
        for name, row in cls["settings"].items():
            if "skipped" in row:
                lines.append(f"| {name} | 0 | skipped: {row['skipped']} | | |")
                continue
            per_seed = "; ".join(f"seed {r['seed']}: {_num(r['accuracy'], 3)} / {_num(r['macro_f1'], 3)}" for r in row["runs"])
            lines.append(f"| {name} | {row['runs'][0]['n_train']} | {_num(row['accuracy_mean'])} ± {_num(row['accuracy_std'])} "
                         f"| {_num(row['macro_f1_mean'])} ± {_num(row['macro_f1_std'])} | {per_seed} |")
        lines.append("")

    if "memorization" in report:
        mem = report["memorization"]
        ref = (mem.get("held_out_reference") or {}).get("pixel_similarity", {})
        lines += ["## Memorisation audit", "",
                  f"{mem['n_flagged']} of {mem['n_generated']} generated images are near-copies of a training image "
                  f"({mem['space']} >= {mem['threshold']})"
                  + (f", {mem.get('n_flagged_mirrored', 0)} of them of a training image's mirror." if mem.get("mirrors") else "."),
                  f"Nearest-training pixel correlation of generated images: median {_num(mem['pixel_similarity'].get('p50'))}, "
                  f"max {_num(mem['pixel_similarity'].get('max'))}; of held-out real images: median {_num(ref.get('p50'))}, "
                  f"max {_num(ref.get('max'))}.", ""]
        if mem.get("flagged"):
            lines += ["| generated | training image | pixel correlation |", "|---|---|---|"]
            lines += [f"| `{f['fake_path']}` | `{f['train_path']}`{' (mirrored)' if f.get('mirrored') else ''} "
                      f"| {_num(f['pixel_similarity'])} |" for f in mem["flagged"][:50]]
            lines.append("")

    if report["plots"]:
        lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()] + [""]
    if report.get("timings_s"):
        lines += ["## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)
