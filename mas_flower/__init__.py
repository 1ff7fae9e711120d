"""mas-flower: federated multiple-task learning with MAS (Merge And Split).

The library (this package) is plain PyTorch and knows nothing of Flower; `client_app/` and
`server_app/` are the thin Flower layer on top of it.
"""

__version__ = "0.1.0"
