"""mas-flower: federated multiple-task learning with MAS (Merge And Split).

The library (this package) is plain PyTorch and knows nothing of Flower; `client_app/` and
`server_app/` are the thin Flower layer on top of it, and this package never imports them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mas-flower")  # pyproject.toml's [project] version, the only place it is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
