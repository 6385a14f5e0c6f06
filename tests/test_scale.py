"""Per-study operations at scale: the fast paths give the slow paths' answers, and reading a
study's state from object storage makes no request per key (benchmarks/scale.py measures the times).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.pareto import nondominated
from grid import space
from grid.spec import load_study
from tests.helpers import S3, brute_force_front, config_rows, grid_cli
from trainables.config import TrialConfig

STUDIES = sorted(p.stem for p in (Path(space.__file__).parent / "studies").glob("*.yaml"))


@pytest.mark.parametrize("name", STUDIES)
def test_grid_trials_and_keys_are_those_of_each_trial_validated_and_keyed_alone(name: str) -> None:
    study = load_study(name)  # models, ans_hybrid, per-layer JR, adversarial training, folds
    # A per-layer search is never enumerated: its seeds and a seeded sample of assignments.
    per_layer = study.search.layers is not None
    if per_layer:
        uniform, ans = space.seed_points(study)
        pts = [*uniform, *([ans] if ans else []), *space.random_points(study, 40, seed=1)]
        pts = list({space.point_label(p): p for p in pts}.values())
    else:
        pts = space.points(study)
    trials, keys = space.grid_trials(study, pts)
    assert list(trials) == [space.point_label(p) for p in pts]
    for label, ts in trials.items():
        assert [t.fold for t in ts] == list(range(study.folds))
        for t, key in zip(ts, keys[label], strict=True):
            # A fold's copy is the config validation gives, and its key the hash of its identity.
            assert TrialConfig.model_validate(t.model_dump()) == t
            blob = json.dumps(t.identity(), sort_keys=True, separators=(",", ":"))
            assert key == t.key == hashlib.sha256(blob.encode()).hexdigest()[:16]
    want = len(pts) * study.folds if per_layer else study.grid_size
    assert len({k for ks in keys.values() for k in ks}) == want


@pytest.mark.parametrize("seed", range(40))
def test_two_objective_front_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    acc = rng.integers(0, 6, n) / 5  # few values: ties on one and both objectives
    size = rng.integers(0, 6, n).astype(float)
    if seed % 4 == 0:
        size[rng.random(n) < 0.2] = np.inf
    keys = [f"k{i}" for i in range(n)]
    got = {k for k, m in zip(keys, nondominated(np.c_[acc, size], [True, False]), strict=True) if m}
    assert got == brute_force_front(list(zip(keys, acc, size, strict=True)))


def _scale_study(tmp_path: Path, results: str) -> Path:
    """A study of 300 trials (3 bits x 2 sparsity x 10 jr_weight x 5 folds)."""
    path = tmp_path / "scale.yaml"
    jr = [round(0.01 * i, 2) for i in range(10)]
    path.write_text(
        "name: scale\ndataset: digits\nmodel: digits_cnn\nfolds: 5\n"
        f"axes:\n  bits: [float, 4, ternary]\n  sparsity: [0.0, 0.5]\n  jr_weight: {jr}\n"
        "attacks:\n  - name: pgd\n    eps: [0.1]\n"
        f"results: {results}\n"
    )
    return path


def _settled(log: list[str]) -> int:
    """Requests the server has logged, once its log stops growing."""
    import time

    last = -1
    while len(log) != last:
        last = len(log)
        time.sleep(0.3)
    return last


def _stored_study(s3: S3, tmp_path: Path) -> tuple[Path, Any]:
    """300 trials' study on S3: 290 keys' rows written through the store, 10 left to run."""
    from grid.store import ParquetSink

    study_file = _scale_study(tmp_path, f"{s3.uri}/results")
    study = load_study(str(study_file))
    sink = ParquetSink(study.results_dir().uri, study.name, "test")
    configs = [t for p in space.points(study) for t in study.point_trials(p)]
    assert len(configs) == 300
    rng = np.random.default_rng(0)
    for cfg in configs[:290]:
        sink(cfg.key, config_rows(cfg, float(rng.uniform(0.1, 0.9)), int(rng.integers(100, 9000))))
    return study_file, study


def _requests(s3: S3, study_file: Path, study: Any) -> tuple[str, int, int]:
    """``grid status``'s output and the requests it made, and those of resume planning."""
    from grid.planning import plan
    from grid.state import StudyState

    before = _settled(s3.log)
    status = grid_cli("status", str(study_file))
    assert status.returncode == 0, status.stderr
    assert "(grid, 300 trials): 290 done, 0 running, 0 failed, 10 to do" in status.stdout
    n_status = _settled(s3.log) - before
    planned = plan(study, StudyState(study, study.results_dir()))
    assert (planned.total, planned.skipped, len(planned.payloads)) == (300, 290, 10)
    return status.stdout, n_status, _settled(s3.log) - before - n_status


@pytest.mark.slow
def test_per_key_files_on_object_storage_cost_at_most_two_requests_each(
    s3: S3, tmp_path: Path
) -> None:
    # One listing, then each file's footer and data (the listing gave its size: no HEAD).
    # Reading a key's status and then its rows again made 5 or more requests per key.
    _, n_status, n_plan = _requests(s3, *_stored_study(s3, tmp_path))
    assert n_status <= 2 * 290 + 20 and n_plan <= 2 * 290 + 20, (n_status, n_plan)


@pytest.mark.slow
def test_compacted_results_on_object_storage_take_far_fewer_requests_than_keys(
    s3: S3, tmp_path: Path
) -> None:
    study_file, study = _stored_study(s3, tmp_path)
    compact = grid_cli("compact", str(study_file))
    assert compact.returncode == 0, compact.stderr
    _, n_status, n_plan = _requests(s3, study_file, study)
    assert n_status < 30 and n_plan < 30, (n_status, n_plan)


@pytest.mark.slow
def test_scale_benchmark_compact_gives_the_same_answers_and_keeps_the_per_key_folder(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "scale.py"), "--sizes", "500",
         "--where", "local", "--compact", "--keep", "--repeat", "1", "--ops", "plan,curve",
         "--skip-per-key-above", "400", "--root", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = {(r["op"], r["layout"]): r for r in json.loads(out.read_text())}
    assert set(got) == {
        ("plan", "per-key"), ("curve", "per-key"), ("compact", "compacted"),
        ("plan", "compacted"), ("curve", "compacted"),
    }  # fmt: skip
    populated = got["plan", "per-key"]["populated"]
    left = populated["failed"] + populated["missing"]  # resume runs the failed and the missing
    assert got["plan", "per-key"]["said"] == got["plan", "compacted"]["said"]
    assert got["plan", "compacted"]["said"] == f"{left:,} of 500 trials left"
    assert got["curve", "per-key"]["error"] == "skipped (see docs)"  # 500 keys > 400
    assert got["curve", "per-key"]["seconds"] is None
    assert got["curve", "compacted"]["seconds"] is not None
    # The compaction merged every complete and stale key and kept the failed ones per-key ...
    merged = populated["complete"] + populated["stale"]
    assert (
        f"compacted {merged} key(s) into 1 compacted file(s)" in got["compact", "compacted"]["said"]
    )
    # ... of a linked copy: the per-key folder is whole for the next run, the copy gone.
    rows = tmp_path / "local" / "n500" / "scale-500" / "rows"
    assert len(list(rows.glob("*.parquet"))) == merged + populated["failed"]
    assert not (tmp_path / "local" / "n500-compacted").exists()
    assert "skipped (see docs)" in run.stdout and "compact" in run.stdout


@pytest.mark.slow
def test_analysis_on_object_storage_reads_each_per_key_file_in_two_requests(
    s3: S3, tmp_path: Path
) -> None:
    # analysis.connect lists once and takes each file's size from the listing (no HEAD):
    # its footer and its data, 2 requests a file.
    from analysis.query import connect

    _, study = _stored_study(s3, tmp_path)
    before = _settled(s3.log)
    con = connect(study.results_dir().uri)
    assert con.execute("SELECT count(DISTINCT key) FROM rows").fetchone() == (290,)
    n = _settled(s3.log) - before
    assert n <= 2 * 290 + 20, n
