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


UNRELIABLE = "⚠ n ≤ D, unreliable"


def _fd_cell(row: dict) -> str:
    """FD with its warning beside it when the smaller set is not larger than the feature dimension."""
    text = _num(row.get("fd"))
    return f"{text} {UNRELIABLE}" if row.get("fd") is not None and row.get("fd_reliable") is False else text


def _headline_distance(row: dict) -> str:
    """KID (unbiased, with its spread) where FD is unreliable, else FD; the other one follows."""
    if row.get("fd_reliable") is False:
        return f"KID **{_kid(row.get('kid'))}** (FD {_fd_cell(row)})"
    return f"FD **{_num(row.get('fd'))}** {_ci(row.get('fd_ci95'))} (KID {_kid(row.get('kid'))})"


def _headline(report: dict) -> list[str]:
    """One row per computed metric: the figure to read first, and where its details are."""
    rows = []
    if "fid" in report:
        rows.append(("FID (Inception)", f"{_num(report['fid']['value'])} {_ci(report['fid']['ci95'])}"))
    if "kid" in report:
        rows.append(("KID (Inception)", _kid(report["kid"])))
    if "dfd" in report:
        rows.append(("distance in the feature space (below)", _headline_distance(report["dfd"])))
    if "color" in report:
        rows.append(("colour distance", _num(report["color"]["distance"].get("distance"))))
    if "conditional" in report:
        rows.append(("conditional accuracy", _num(report["conditional"]["accuracy"])))
    if "classification" in report:
        settings = report["classification"]["settings"]
        rows.append(("downstream accuracy (real / synthetic / both)",
                     " / ".join(_num(row.get("accuracy_mean")) for row in settings.values())))
    if "memorization" in report:
        mem = report["memorization"]
        rows.append(("near-copies of training images", f"{mem['n_flagged']} / {mem['n_generated']}"))
    if "diversity" in report:
        div = report["diversity"]
        rows.append(("diversity: MS-SSIM generated / real (ratio)",
                     f"{_num(div['ms_ssim'])} / {_num(div['real_ms_ssim'])} ({_num(div['ratio'], 3)})"))
    if "prdc" in report and "unavailable" not in report["prdc"]:
        prdc = report["prdc"]
        rows.append((f"precision / recall / density / coverage (k={prdc['k']})",
                     " / ".join(_num(prdc[m], 3) for m in ("precision", "recall", "density", "coverage"))))
    if not rows:
        return []
    return ["## Headline", "", "| metric | value |", "|---|---|"] + [f"| {m} | {v} |" for m, v in rows] + [""]


def _diversity(div: dict) -> list[str]:
    lines = ["## Diversity (mean pairwise MS-SSIM within a class; higher = less varied)", "",
             f"torchmetrics MS-SSIM at {div['image_size']} px, {div['scales']} scales, kernel {div['kernel_size']}, "
             f"betas {div['betas']}; at most {div['max_pairs_per_class']} seeded pairs per class. Ratio = generated / "
             "real: above 1 the generated images of a class vary less than the real ones.", "",
             "| class | n generated | n real | MS-SSIM generated | MS-SSIM real | ratio | pairs |", "|---|---|---|---|---|---|---|"]
    lines.append(f"| all (mean over classes) | | | **{_num(div['ms_ssim'])}** | {_num(div['real_ms_ssim'])} "
                 f"| **{_num(div['ratio'], 3)}** | {div['pairs']} |")
    for label, row in div["per_class"].items():
        ratio = _num(row["ratio"], 3) if "unavailable" not in row else f"unavailable: {row['unavailable']}"
        lines.append(f"| {label} | {row['n']} | {row['n_real']} | {_num(row['ms_ssim'])} | {_num(row['real_ms_ssim'])} "
                     f"| {ratio} | {row['pairs']} |")
    return lines + [""]


def _prdc_rows(block: dict) -> list[str]:
    lines = ["| class | n real | n fake | precision | recall | density | coverage |", "|---|---|---|---|---|---|---|"]
    for label, row in [("all", block), *block.get("per_class", {}).items()]:
        if "unavailable" in row:
            lines.append(f"| {label} | {row.get('n_real', '')} | {row.get('n_fake', '')} | unavailable: {row['unavailable']} | | | |")
            continue
        lines.append(f"| {label} | {row['n_real']} | {row['n_fake']} | "
                     + " | ".join(_num(row[m], 3) for m in ("precision", "recall", "density", "coverage")) + " |")
    return lines + [""]


def _prdc(prdc: dict) -> list[str]:
    lines = [f"## Precision, recall, density, coverage (Naeem et al., 2020; k={prdc['k']})", "",
             "Precision: generated images inside the real manifold (fidelity). Recall and coverage: real images "
             "reached by the generated set (variety; a collapsed set scores near 0). Density about 1 for matching "
             "sets. The k-nearest-neighbour balls are noisy at small n; compare runs at the same n.", "",
             f"In {prdc['feature_space']}:", ""] + _prdc_rows(prdc)
    other = prdc.get("efficientnet")
    if other:
        if "unavailable" in other and "per_class" not in other:
            lines += [f"In EfficientNet-Lite0: unavailable: {other['unavailable']}", ""]
        else:
            lines += [f"In {other['feature_space']}:", ""] + _prdc_rows(other)
    return lines


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
    lines += _headline(report)
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
                  f"Where n ≤ D={dfd['feature_dim']} (marked {UNRELIABLE}) the covariance is singular and FD is biased "
                  "upward: read KID there (unbiased at small n). KID's ± is its std over subsets; a subset is never "
                  "larger than the smaller set, so at small n it spans that whole set and the ± shows the other "
                  "set's sampling only (0 when both sets have the same n).", "",
                  "| class | n real | n fake | FD | FD 95% CI | KID mean ± std |", "|---|---|---|---|---|---|"]
        rows = [("all", dfd)] + list(dfd.get("per_class", {}).items())
        for label, row in rows:
            kid = _kid(row.get("kid"))
            kid = f"**{kid}**" if row.get("fd_reliable") is False else kid
            lines.append(f"| {label} | {row['n_real']} | {row['n_fake']} | {_fd_cell(row)} | {_ci(row.get('fd_ci95'))} "
                         f"| {kid} |")
        lines.append("")
        for label, row in rows[1:]:  # the overall row's warnings are in the Warnings section above
            lines += [f"- {label}: {note}" for note in row.get("warnings", [])]
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

    if "diversity" in report:
        lines += _diversity(report["diversity"])
    if "prdc" in report:
        lines += _prdc(report["prdc"])

    if report["plots"]:
        lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()] + [""]
    if report.get("timings_s"):
        lines += ["## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)
