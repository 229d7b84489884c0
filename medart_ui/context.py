"""What the app's callbacks share: the review store, the generator, the captioner, who is signed
in with which role, and where files go. `open_app` builds it from the parsed options."""

from __future__ import annotations

import argparse
import getpass
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medart_ui.jobs import Jobs
from medart_ui.options import LOOPBACK, SignIn, sign_in

SPACE_STORAGE = Path("/data")  # a Hugging Face Space's persistent storage, when the Space has it
PUBLIC_NOTICE = ("This is a public demo without sign-in (--no-auth): anyone who can reach it can read and edit "
                 "the descriptions. Do not upload patient images.")
PRELOAD_JOB = "load the generator"

logger = logging.getLogger("medart.app")


def choose_home(home: str | None, space_storage: Path | None = None) -> tuple[Path, str | None]:
    """The writable folder for the store and outputs, and a warning when edits will not last."""
    from medart_core.store.location import default_home

    if home:
        return Path(home).expanduser().resolve(), None
    return default_home(space_storage or SPACE_STORAGE)


class Generator:
    """Loads the pipeline once (in the background at start, or on first use) and serialises
    requests to it."""

    def __init__(self, model: str | None, lora: str | None):
        from medart_core.model_card import sampling_defaults

        self.model_name, self.lora = model, lora
        self.defaults = sampling_defaults(model)  # guidance and steps the model card recommends
        self._model = None
        self._lock = threading.Lock()

    def status(self) -> str:
        if not self.model_name:
            from medart_core.model_presets import PRESETS

            presets = ", ".join(f"`{name}`" for name in PRESETS)
            return ("**No model loaded**, so Generate and Compare are off: start the app with "
                    f"`--model` and a preset ({presets}; online) or `--model PATH` to a local "
                    "diffusers PixArt-alpha or PixArt-Sigma folder. Review works without a model.")
        adapters = f" with LoRA `{self.lora}`" if self.lora else ""
        return f"Model: `{self.model_name}`{adapters}. Every generated image is marked as synthetic."

    def load(self):
        """The loaded pipeline; a request arriving while it loads waits for it rather than loading twice."""
        from medart_core.errors import MedArtError
        from medart_core.pipeline import load_pipeline

        if not self.model_name:
            raise MedArtError("no model loaded: restart the app with --model (see the note at the top)")
        with self._lock:
            if self._model is None:
                self._model = load_pipeline(self.model_name, lora=self.lora)
            return self._model

    def prepare(self) -> None:
        """Load, then sample one image for one step: the first sampling pays one-time costs (lazy
        imports, the tokenizer's and the kernels' first use) that loading alone does not."""
        self(["warm-up"], [0], 1, self.defaults.guidance)

    def __call__(self, prompts: list[str], seeds: list[int], steps: int, guidance: float, progress=None):
        """PIL images, one per (prompt, seed)."""
        from medart_core.generation import GenerationSettings, generate_images

        model = self.load()

        def report_step(i, t, latents):
            if progress is not None:
                progress((i + 1, int(steps)), desc="sampling")

        with self._lock:
            return generate_images(model, prompts, seeds, GenerationSettings(steps=int(steps), guidance=float(guidance)),
                                   step_callback=report_step)

    def record(self, prompt: str, label: str | None, seed: int, steps: int, guidance: float, file_name: str) -> dict:
        """The metadata (and PNG text chunks) of one generated image, as the generate CLI writes them."""
        adapters = self._model.adapters.describe() if self._model else ""
        return {"file_name": file_name, "text": prompt, "label": label, "seed": seed, "steps": int(steps),
                "guidance": float(guidance), "model": self.model_name, "adapters": adapters, "synthetic": True}


@dataclass
class App:
    """The state every tab's callbacks share."""

    store: object  # medart_core.store.ReviewStore
    generator: Generator
    data: Path
    home: Path
    vlm: str
    signin: SignIn
    anonymous: str  # the author recorded when nobody signs in
    warnings: list[str] = field(default_factory=list)
    jobs: Jobs = field(default_factory=Jobs)
    _captioner: object = None
    _captioner_lock: threading.Lock = field(default_factory=threading.Lock)
    _verifier: object = None

    @property
    def uploads(self) -> Path:
        return self.home / "uploads"

    @property
    def generated(self) -> Path:
        return self.home / "generated"

    @property
    def exports(self) -> Path:
        return self.home / "export"

    @property
    def study_copies(self) -> Path:
        """Blinded copies for reader-study readers (medart_ui/files.py serves each to its reader only)."""
        return self.home / "study-copies"

    @property
    def study_reports(self) -> Path:
        return self.home / "study-reports"

    def served_folders(self) -> list[str]:
        """The only folders whose files the app serves: the data and its own outputs (not the store)."""
        return [str(p) for p in (self.data, self.uploads, self.generated, self.exports, self.study_copies,
                                 self.study_reports)]

    def captioner(self):
        from medart_core.captioning import FALLBACK, load_vlm
        from medart_core.fallback_captioner import FallbackCaptioner

        with self._captioner_lock:
            if self._captioner is None:
                self._captioner = FallbackCaptioner() if self.vlm == FALLBACK else load_vlm(self.vlm)
            return self._captioner

    @property
    def verifier(self):
        """Checks sign-ins against the accounts (None when nobody signs in)."""
        from medart_core.accounts import Verifier

        if self._verifier is None and self.signin.required:
            self._verifier = Verifier(self.signin.accounts)
        return self._verifier

    def user(self, request) -> str | None:
        return getattr(request, "username", None)

    def role_of(self, user: str | None) -> str | None:
        """The role of a signed-in user, or of everyone when nobody signs in."""
        if not self.signin.required:
            return self.signin.default_role
        return self.verifier.role(user)

    def role(self, request) -> str | None:
        return self.role_of(self.user(request))

    def author(self, request) -> str:
        return self.user(request) or self.anonymous

    def reader_files(self, user: str | None) -> set[Path]:
        """The files a reader may fetch: the blinded copy of their current trial in each open study
        they are invited to, and gradio's cached copy of it; nothing once answered or closed."""
        from medart_core.store.studies import Studies

        return Studies(self.store).served_files(user if self.signin.required else self.anonymous)

    def study_files(self) -> set[Path]:
        """Every blinded copy served now: unmarked synthetic images, for their own reader only."""
        from medart_core.store.studies import Studies

        return Studies(self.store).served_files()

    def preload(self):
        """Load and warm up the generator in the background, so the first Generate does not wait for it."""
        if self.generator.model_name:
            return self.jobs.start(PRELOAD_JOB, self.generator.prepare)
        return None


def open_app(args: argparse.Namespace) -> App:
    """Resolve sign-in, open (and migrate) the store, import the data folder, prepare the generator.
    Raises MedArtError with the reason when something given is unusable."""
    from medart_core.fallback_captioner import FallbackCaptioner
    from medart_core.store import ReviewStore, caption_describer, import_dataset
    from medart_core.store.location import DEFAULT_DB_NAME

    signin = sign_in(args)  # before the slow part: a bad account list is refused at once
    home, warning = choose_home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).expanduser().resolve()
    store = ReviewStore(args.db or home / DEFAULT_DB_NAME, approvals_required=args.approvals_required)
    summary = import_dataset(store, data, author="import", describe=caption_describer(FallbackCaptioner()))
    logger.info("review store %s: %s", store.url, summary)
    anonymous = "anonymous" if (signin.no_auth or args.host not in LOOPBACK) else getpass.getuser()
    app = App(store, Generator(args.model, args.lora), data, home, args.vlm, signin, anonymous)
    if signin.no_auth and args.host not in LOOPBACK:
        app.warnings.append(PUBLIC_NOTICE)
    if summary.skipped:
        app.warnings.append(f"{len(summary.skipped)} files of the data folder were skipped (unreadable or unsafe), "
                            f"e.g. {summary.skipped[0]}")
    for note in signin.warnings + ([warning] if warning else []):
        app.warnings.append(note)
        logger.warning(note)
    return app
