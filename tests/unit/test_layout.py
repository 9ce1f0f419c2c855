"""common/layout.py: one definition of a method run's files, as the server writes them and the
benchmark, judge, referee and verify read them."""

from pathlib import Path

from bench.audit import local_targets
from common.layout import RunLayout
from common.release import export_release


def test_the_layout_names_the_files_every_process_shares(tmp_path):
    lay = RunLayout(tmp_path / "fedbn")
    assert lay.state == tmp_path / "fedbn" / "state.json"
    assert lay.checkpoint(7).name == "round_0007.npz"
    assert lay.strategy_checkpoint(7).name == "strategy_round_0007.npz"
    assert lay.checkpoint(7).parent == lay.strategy_checkpoint(7).parent == lay.checkpoints
    assert lay.site_release("A", relative=True) == Path("site-state/fedbn/siteA/release")
    assert lay.site_release("A") == lay.root / lay.site_release("A", relative=True)
    assert lay.site_release("A").parents[2] == lay.site_states


def test_the_referee_finds_per_site_releases_where_the_layout_puts_them(tmp_path):
    import numpy as np

    lay = RunLayout(tmp_path / "fedbn")
    params = {"w": np.zeros(2, np.float32)}
    for s in "AC":
        export_release(lay.site_release(s), params, {"method": "fedbn", "site": s})
    assert local_targets(lay.root) == {s: str(lay.site_release(s, relative=True)) for s in "AC"}
    export_release(lay.release, params, {"method": "fedbn"})
    assert local_targets(lay.root) == {"all": "release"}
