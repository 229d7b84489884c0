"""Med-Art web app (Gradio): review image descriptions, generate synthetic images, compare them.

    python app.py [--data DIR] [--db URL] [--model MODEL] [--lora DIR] [--vlm MODEL]
                  [--host 127.0.0.1] [--port 7860] [--auth-file FILE | --auth USER:PASS ... | --no-auth]

The entry point (also a Hugging Face Space's app_file): parse the options, open the app, launch.
`python app.py --help` explains every option; the UI lives in medart_ui/, the work in medart_core/.
"""

import logging
import os
import sys

from medart_ui.context import open_app
from medart_ui.interface import build_demo, launch_options, serve
from medart_ui.options import parse_args

__all__ = ["build_demo", "launch_options", "main", "open_app", "parse_args", "serve"]


def main(argv: list[str] | None = None) -> int:
    from medart_core.errors import MedArtError
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports from a medical app
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step is noise at every start
    args = parse_args(argv)
    try:
        app = open_app(args)  # refuses bad or contradictory sign-in settings before the slow start
    except MedArtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(app, args).block_thread()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
