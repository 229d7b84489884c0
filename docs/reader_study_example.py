"""The README's worked reader-study example: two *scripted* readers (programs, not clinicians)
take a study through the app's API, exactly as a remote reader's client would.

- "sharpness": calls an image synthetic when it is blurrier than the blurriest tenth of the real
  training images (variance of a Laplacian of the grey image; threshold fixed from the training
  split before the study, never from the study's images), confidence from how far it is;
- "always-real": answers "real" every time (a reader who cannot tell).

    python docs/reader_study_example.py --url http://127.0.0.1:7860/ --admin alice:PW \
        --reader sharpness:PW --reader always-real:PW --study demo-turing
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = Path(__file__).resolve().parent.parent / "assets" / "demo" / "train"


def sharpness(path) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (0..1)."""
    grey = np.asarray(Image.open(path).convert("L"), dtype=float) / 255
    laplacian = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var())


def main() -> None:
    from gradio_client import Client

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860/", help="the running app (default: %(default)s)")
    parser.add_argument("--admin", required=True, help="USER:PASSWORD of an admin, who creates the study")
    parser.add_argument("--reader", action="append", required=True,
                        help="USER:PASSWORD of a scripted reader; the user name picks the script "
                             "(sharpness or always-real); give it twice")
    parser.add_argument("--study", default="demo-turing", help="study name (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=4, help="real and synthetic images per class (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw and reader orders (default: 0)")
    args = parser.parse_args()

    threshold = float(np.percentile([sharpness(p) for p in sorted(TRAIN.glob("*.png"))], 10))
    admin = Client(args.url, auth=tuple(args.admin.split(":", 1)), verbose=False)
    readers = [r.split(":", 1) for r in args.reader]
    print(admin.predict(args.study, args.per_class, args.per_class, [u for u, _ in readers], args.seed,
                        api_name="/create_study"))
    for user, password in readers:
        client = Client(args.url, auth=(user, password), verbose=False)
        while not (trial := client.predict(args.study, api_name="/next_trial"))["done"]:
            if user == "sharpness":
                value = sharpness(trial["image"])
                said = "synthetic" if value < threshold else "real"
                confidence = int(np.clip(1 + 4 * abs(np.log(value / threshold)), 1, 5))
            else:
                said, confidence = "real", 3
            client.predict(args.study, trial["trial"], said, confidence, confidence if said == "real" else 1,
                           "", None, api_name="/answer_trial")
    results = admin.predict(args.study, api_name="/study_results")
    for name, f in [*results["readers"].items(), ("pooled", results["pooled"])]:
        print(f"{name}: n {f['n']} accuracy {f['accuracy']:.3f} sensitivity {f['sensitivity']:.3f} "
              f"specificity {f['specificity']:.3f} AUC {f['auc']:.3f} {f.get('auc_ci')} "
              f"p {f['binomial_test']['p_value']:.2g}")
    print("agreement", results["agreement"])
    print("realism", results["realism"])


if __name__ == "__main__":
    main()
