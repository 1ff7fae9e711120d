"""The data a run's settings point at, made ready before any node is contacted.

`prepare_data(settings)` is the one call every ServerApp makes after `load_settings`: the project's
(`server_app/app.py`) and a user's own (docs/strategies.md, section "Your own ServerApp"). With no
`data-root` it generates the built-in synthetic federation once and returns settings that point at it,
so a run out of the box needs no downloaded data.
"""

from __future__ import annotations

import dataclasses
from logging import INFO, getLogger

from mas_flower.defaults import synthetic_root
from mas_flower.heartbeat import heartbeat
from mas_flower.settings import Settings

#: Flower's own logger (as `flwr.common.logger.log` writes), so the lines show where the run's do.
_LOG = getLogger("flwr")


def prepare_data(settings: Settings) -> Settings:
    """`settings` unchanged when `data-root` is set; else a copy whose `data_root` is the synthetic federation.

    The synthetic federation (`synthetic-buildings` buildings × `synthetic-views` views of
    `synthetic-size` px, from `seed`) lives at `defaults.synthetic_root(settings)` under
    `$MAS_FLOWER_HOME/data/`; it is generated on first use and reused after (about a second per
    building at 32 px on one CPU core). Nodes read the data-root the server sends them, so in a
    simulation they find it there too. Raises ValueError if that folder holds something else.
    """
    if settings.data_root:
        return settings
    from mas_flower.synthetic import generate_dataset  # numpy ray casting: imported only when needed

    root = synthetic_root(settings)
    _LOG.log(INFO, "no data-root given: using the synthetic federation at %s (generated on first use)", root)
    written = [0]
    total = settings.synthetic_buildings
    with heartbeat(lambda t: _LOG.log(INFO, "generating the synthetic federation: %d of %d buildings written (%.0f s)",
                                 written[0], total, t)):
        generate_dataset(root, buildings=total, views=settings.synthetic_views, size=settings.synthetic_size,
                         seed=settings.seed, progress=lambda k: written.__setitem__(0, k))
    return dataclasses.replace(settings, data_root=str(root))
