"""Energy-Driven Steering (EDS): the library.

One concept per module: configuration (`config`), offline switches (`env`), model loading
(`models`), benchmark registry (`datasets`), the judge C(X, Y) (`judge`), batched generation
(`generation`), atomic sharded records (`records`) and experiment tracking (`tracking`).
Stage logic lives in `pipelines/`, never here.
"""

from eds.env import apply_offline_defaults

apply_offline_defaults()

__version__ = "0.1.0"
