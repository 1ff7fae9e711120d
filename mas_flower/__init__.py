"""mas-flower: federated multiple-task learning with MAS (Merge And Split).

The library core (tasks, data, models, losses, training, the affinity, the group searches, the
methods) is plain PyTorch and imports no Flower. `mas_flower.strategy`, `mas_flower.wire` and
`mas_flower.protocol` are its Flower-facing layer. `client_app/` and `server_app/` are the thin Flower
apps on top of both, and this package never imports them (docs/layout.md).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mas-flower")  # pyproject.toml's [project] version, the only place it is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
