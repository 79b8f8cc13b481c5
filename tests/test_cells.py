"""The cell map's member blocks: one per (listener, pool, member) name for
the life of the memory, bounded, and their gauges die with their worker."""

from __future__ import annotations

from lbcore.cells import CellMap
from lbcore.config import load_config_text
from lbcore_ext import counters as C

CONFIG = """\
listeners:
  - {name: web, protocol: HTTP, port: 18080, default_pool: p}
  - {name: api, protocol: HTTP, port: 18081, default_pool: q}
pools:
  p:
    health_check: {enabled: false}
    members: [{name: a, address: 127.0.0.1, port: 1}, {name: b, address: 127.0.0.1, port: 2}]
  q:
    health_check: {enabled: false}
    members: [{name: c, address: 127.0.0.1, port: 3}]
"""


def cfg_of(text: str = CONFIG):
    return load_config_text(text, resolve=False)


def test_member_blocks_are_stable_and_per_listener():
    cfg = cfg_of()
    cells = CellMap(member_blocks=8)
    layout = cells.layout(cfg)
    a = cells.member_cells(cfg, layout, "p", "a")
    b = cells.member_cells(cfg, layout, "p", "b")
    assert a[0] >= cells.member_start and a[1] == -1       # api never routes to p
    assert b[0] == a[0] + C.MEMBER_BLOCK
    # A reload that drops a listener (api moves first): the same names, the same blocks.
    swapped = cfg_of(CONFIG.replace("  - {name: web, protocol: HTTP, port: 18080, "
                                    "default_pool: p}\n", ""))
    layout2 = cells.layout(swapped)
    assert cells.member_cells(swapped, layout2, "q", "c") == \
        cells.member_cells(cfg, layout, "q", "c")[1:]
    assert cells.member_cells(cfg, cells.layout(cfg), "p", "a") == a


def test_member_blocks_are_bounded():
    cfg = cfg_of()
    cells = CellMap(member_blocks=2)
    layout = cells.layout(cfg)
    assert cells.member_cells(cfg, layout, "p", "a")[0] >= 0
    assert cells.member_cells(cfg, layout, "p", "b")[0] >= 0
    # A third name (a DNS answer's new address): no block of its own.
    assert cells.member_cells(cfg, layout, "p", "a/10.0.0.9") == [-1, -1]
    assert cells.member_cells(cfg, layout, "p", "a")[0] >= 0      # known ones keep theirs
    assert cells.row == cells.member_start + 2 * C.MEMBER_BLOCK


def test_member_gauges_are_not_carried_over():
    cells = CellMap(member_blocks=3)
    gauges = set(cells.gauges())
    for k in range(3):
        base = cells.member_start + k * C.MEMBER_BLOCK
        assert base + C.M_ACTIVE in gauges and base + C.M_CONN_ACTIVE in gauges
        assert base + C.M_REQUESTS not in gauges and base + C.M_BYTES_IN not in gauges
