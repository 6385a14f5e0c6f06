"""Config identities as columns (trainables/identity.py): written with every row, filled on
read for older rows from meta_config_json, the same either way; pairings share them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import analysis
from grid.store import SCHEMA, ParquetSink
from tests.helpers import config_rows, rows_for
from trainables.config import TrialConfig
from trainables.identity import IDS, id_columns

ID_COLUMNS = list(IDS)


def _ids(folder: Path) -> dict[str, tuple[Any, ...]]:
    con = analysis.connect(folder)
    got = con.execute(f"SELECT DISTINCT key, {', '.join(ID_COLUMNS)} FROM rows").fetchall()
    return {r[0]: tuple(r[1:]) for r in got}


def _configs() -> list[TrialConfig]:
    return [
        TrialConfig(folds=2, fold=0),
        TrialConfig(folds=2, fold=1),
        TrialConfig(folds=2, fold=0, sparsity=0.5),  # differs from the first only in sparsity
        TrialConfig(folds=2, fold=0, bits="4", layer_bits={"conv1": 8}),
        TrialConfig(folds=2, fold=0, jr_weight=0.01),  # only in JR
        TrialConfig(folds=2, fold=0, layer_sparsity={"conv1": 0.5}),
    ]


def test_fresh_ids_equal_the_ids_filled_on_read(tmp_path: Path) -> None:
    """The same rows three ways: as written now, as an old file without the columns, and with
    them null: every id read back is the worker's."""
    fresh, old, nulls = tmp_path / "fresh", tmp_path / "old", tmp_path / "nulls"
    sink = ParquetSink(str(fresh), "t", "rev")
    for cfg in _configs():
        rows = config_rows(cfg, 0.5, 1000)
        assert all(r[c] is not None for r in rows for c in ID_COLUMNS)
        sink(cfg.key, rows)
        table = pa.Table.from_pylist(rows, SCHEMA)
        for folder, t in (
            (old, table.drop_columns(ID_COLUMNS)),
            (nulls, table.drop_columns(ID_COLUMNS).append_column(
                ID_COLUMNS[0], pa.nulls(table.num_rows, pa.string()))),
        ):  # fmt: skip
            (folder / "rows").mkdir(parents=True, exist_ok=True)
            pq.write_table(t, folder / "rows" / f"{cfg.key}.parquet")
    assert (
        "meta_config_id" not in pq.read_schema(old / "rows" / f"{_configs()[0].key}.parquet").names
    )
    want = _ids(fresh)
    assert len(want) == len(_configs())
    assert _ids(old) == want and _ids(nulls) == want


def test_the_ids_are_hashes_of_the_config_less_their_fields() -> None:
    """By hand: SHA-256 of the canonical JSON of the config dict less the fields."""
    config = TrialConfig(folds=2, fold=1, sparsity=0.5).identity()
    rest = {k: v for k, v in config.items() if k not in ("fold", "sparsity", "clusters", "bits",
            "activation_bits", "layer_bits")}  # fmt: skip
    blob = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
    assert id_columns(config)["meta_baseline_pair_id"] == hashlib.sha256(blob).hexdigest()[:16]


def test_pairings_share_ids() -> None:
    base, fold1, sparse, q4, jr, layer = (id_columns(c.identity()) for c in _configs())
    assert base["meta_config_id"] == fold1["meta_config_id"]  # one config over its folds
    assert sparse["meta_config_id"] != base["meta_config_id"]
    # a reduction pairs with its baseline; JR does not
    assert sparse["meta_baseline_pair_id"] == base["meta_baseline_pair_id"]
    assert q4["meta_baseline_pair_id"] == base["meta_baseline_pair_id"]
    assert layer["meta_baseline_pair_id"] == base["meta_baseline_pair_id"]
    assert jr["meta_baseline_pair_id"] != base["meta_baseline_pair_id"]
    # JR pairs with its JR-off twin; a reduction does not
    assert jr["meta_jr_pair_id"] == base["meta_jr_pair_id"]
    assert sparse["meta_jr_pair_id"] != base["meta_jr_pair_id"]


def test_rows_without_config_json_get_ids_from_their_columns(tmp_path: Path) -> None:
    """Rows written by other tools (no meta_config_json): a baseline and its pruned twin share
    the baseline pair id; the same config in two studies stays two configs."""
    sink, other = ParquetSink(str(tmp_path), "a", "rev"), ParquetSink(str(tmp_path), "b", "rev")
    sink("base", rows_for("base", {("pgd", 0.1): 0.5}, 0.9, 1000, bits="float", study="a"))
    sink("pruned", rows_for("pruned", {("pgd", 0.1): 0.4}, 0.9, 500, bits="float", sparsity=0.5))
    other("base_b", rows_for("base_b", {("pgd", 0.1): 0.5}, 0.9, 1000, bits="float", study="b"))
    ids = {k: dict(zip(ID_COLUMNS, v, strict=True)) for k, v in _ids(tmp_path).items()}
    assert ids["base"]["meta_baseline_pair_id"] == ids["pruned"]["meta_baseline_pair_id"]
    assert ids["base"]["meta_config_id"] != ids["pruned"]["meta_config_id"]
    assert ids["base"]["meta_config_id"] != ids["base_b"]["meta_config_id"]
