"""Med-Art: text-to-image generation for small medical-imaging datasets.

The library behind the app, the command line (`python -m medart_core ...`) and `finetune/`.
Importing it does no work: models load only when a function is called.
"""

from medart_core.errors import MedArtError

__all__ = ["MedArtError"]
__version__ = "0.1.0"
