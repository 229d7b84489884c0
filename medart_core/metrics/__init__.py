"""Evaluation of a synthetic image set against real images (`python -m medart_core evaluate`).

One module per job, each readable on its own:
  sets.py          which real / synthetic / training images are compared, streamed as uint8 batches
  features.py      feature extractors (EfficientNet-Lite0, the domain classifier, pixels), one pass per set
  classifier.py    the small CNN trained on real images: domain features, conditional accuracy, downstream
  distances.py     Frechet distance and KID (torch-fidelity / torchmetrics), bootstrap CIs, small-n warnings
  color.py         per-channel colour statistics and histogram distances
  memorization.py  nearest training image of each synthetic one, near-copy flags
  diversity.py     mean pairwise MS-SSIM within a class (torchmetrics), generated vs real
  prdc.py          precision, recall, density, coverage (Naeem et al., 2020; the authors' prdc package)
  plots.py         PNG figures (matplotlib, Agg)
  report.py        runs the chosen metrics and writes report.json / report.md
  markdown.py, html.py   report.md, and report.html: the same page self-contained (plots inline)
Importing this package loads no model and imports no heavy library.
"""
