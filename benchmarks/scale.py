"""Every per-study operation against the study's size: N trial keys, local disk and S3.

For each N (``--sizes``) a study whose grid has N trials (a real study file:
bits x sparsity x clusters x jr_weight x 5 folds, long axis lists) and a
results folder holding its keys' rows in the real schema, written through the
real store (``grid.store.ParquetSink``, one call per key, as Ray workers do):
92% complete, 3% failed, 5% not run yet, and 1% extra stale keys (rows of an
older results revision).  Each key's rows are one real trial's row set (a tiny
digits trial, run once and cached) with the config columns of the key's own
``TrialConfig`` (``trainables.rows.base_row``) and its metrics varied per key,
so ``grid status``, ``grid pareto`` and ``grid report`` see distinct points.

Then it times, best of ``--repeat`` where an operation takes under 20 s:

  status   ``grid status STUDY --results R`` in a subprocess (start-up counts)
  plan     resume planning in-process: ``StudyState`` + ``grid.planning.plan`` (the keys left)
  pareto   ``grid pareto R`` in a subprocess
  report   ``grid report R --out TMP`` in a subprocess
  curve    the robustness-curve query in-process: ``analysis.connect`` + ``robustness_curve``
           grouped by bits

and prints seconds per operation against N with the growth exponent
log(t2/t1) / log(N2/N1) between consecutive sizes ("worse than linear" past
1.2).  On S3 (``--where s3``: moto's server, started here as a subprocess on
127.0.0.1, logging one line per HTTP request) it also counts the requests
each operation makes.

    python benchmarks/scale.py                                  # N = 1,000 and 10,000, local and S3
    python benchmarks/scale.py --sizes 1000,10000,100000 --where local --keep
    python benchmarks/scale.py --json benchmarks/data/scale.json --png docs/img/scale.png

``--compact`` then times ``grid compact`` (the CLI, in a subprocess) on the
folder and every operation again on the compacted folder (labelled
"compacted"); the table and the figure show both layouts.  Operations that
read every column of every key (pareto, report, curve) are skipped on per-key
files past ``--skip-per-key-above`` keys (DuckDB over 10^5 small files takes
more than 13 GB); status and planning, which read a few columns, always run.

``--front3 N`` times the three-objective front (``objective.clean``: robust up, bytes
down, clean up) of N points drawn like the store's (one per config) in-process: the sweep
``analysis.pareto.nondominated`` against the pairwise check it replaced, in the same run
(both masks checked equal), and exits:

    python benchmarks/scale.py --front3 20000

``--keep`` keeps the populated local folders under ``--root`` (writing 10^5
files takes minutes) and reuses them on the next run; with ``--compact`` it
compacts a hard-linked copy, so the per-key folder stays for the next run.
S3 folders live in the moto server's memory and are written again on every
run.  ``--from-json`` draws the table and the figure from earlier runs'
``--json`` files without measuring anything.

    python benchmarks/scale.py --sizes 1000,10000,100000 --where local --compact --keep
    python benchmarks/scale.py --from-json a.json,b.json --png docs/img/scale.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grid.planning import plan  # noqa: E402
from grid.spec import Study, load_study  # noqa: E402
from grid.state import StudyState  # noqa: E402
from grid.store import SCHEMA, Location, ParquetSink  # noqa: E402
from trainables.config import RESULTS_REVISION, TrialConfig  # noqa: E402
from trainables.rows import base_row, failed_row  # noqa: E402

OPS = ("status", "plan", "pareto", "report", "curve")
LAYOUTS = ("per-key", "compacted")
WIDE_OPS = ("pareto", "report", "curve")  # read every column of every key
SKIPPED = "skipped (see docs)"
CELL = 36  # characters per table cell
FORMAT = 1  # of a populated folder; a folder of another format is written again
BITS = ["float", "16", "12", "10", "8", "6", "4", "3", "2", "ternary"]
SPARSITY = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
FOLDS = 5
PER_PAIR = len(BITS) * len(SPARSITY) * FOLDS  # trials per (clusters, jr_weight) pair
CLUSTERS = [0, 4, 8, 16, 32, 64, 128, 256, 2, 3, 5, 6, 7, 9, 10, 12, 24, 48, 96, 192]
SHARES = {"failed": 0.03, "missing": 0.05, "stale": 0.01}  # of the grid's keys
REPEAT_UNDER_S = 20.0  # repeat an operation (best of --repeat) only when one run is this quick
BUCKET = "robustgrid-scale"


# ---------------------------------------------------------------------------
# The study and its rows


def axes_for(n: int) -> tuple[list[int], list[float]]:
    """Clusters and jr_weight lists whose grid (with BITS, SPARSITY, 5 folds) has about ``n`` trials."""
    pairs = max(1, round(n / PER_PAIR))
    for c in range(1, len(CLUSTERS) + 1):  # fewest clusters values with jr_weight <= 64
        if pairs % c == 0 and pairs // c <= 64:
            return CLUSTERS[:c], [round(i * 1e-3, 6) for i in range(pairs // c)]
    raise ValueError(f"{n} trials cannot be made from these axes (at most {64 * 20 * PER_PAIR})")


def study_yaml(n: int, results: str) -> str:
    clusters, jr = axes_for(n)
    return f"""# benchmarks/scale.py: a study of {len(clusters) * len(jr) * PER_PAIR} trials
name: scale-{n}
dataset: digits
model: digits_cnn
seed: 0
folds: {FOLDS}
train:
  epochs: 1
  fine_tune_epochs: 1
  batch_size: 128
axes:
  bits: {json.dumps(BITS)}
  sparsity: {json.dumps(SPARSITY)}
  clusters: {json.dumps(clusters)}
  jr_weight: {json.dumps(jr)}
attacks:
  - name: fgsm
    eps: [0.05, 0.1]
    samples: 60
  - name: pgd
    eps: [0.05, 0.1]
    steps: 3
    samples: 60
objective:
  attack: worst
  eps: 0.1
results: {results}
"""


def template_rows(cache: Path, study: Study) -> list[dict[str, Any]]:
    """One real trial's row set (the study's first trial, run once; cached in ``cache``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = cache / "template.parquet"
    if not path.is_file():
        from trainables.trial import run_trial  # TensorFlow: only when the template is missing

        cfg = study.point_trials(
            {
                "bits": "4",
                "sparsity": 0.5,
                "clusters": 0,
                "jr_weight": 0.0,
                "adversarial": 0,
                "jr_layers": 0,
            }
        )[0]
        t0 = time.perf_counter()
        rows = run_trial(cfg)
        if any(r["status"] != "complete" for r in rows):
            raise RuntimeError(f"the template trial failed: {rows[0]['reason']}")
        print(
            f"template: one real trial ({len(rows)} rows) in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        cache.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return list(pq.read_table(path).to_pylist())


def key_rows(
    cfg: TrialConfig, template: list[dict[str, Any]], started: str
) -> list[dict[str, Any]]:
    """``template`` (one real trial's rows) as ``cfg``'s: its config columns, metrics varied per key."""
    base = base_row(cfg, started)
    ident = {
        k: v
        for k, v in base.items()
        if k.startswith("cfg_") or k in ("key", "fold", "revision", "meta_config_json")
    }
    rng = np.random.default_rng(int(cfg.key, 16) % 2**32)
    params = int(template[0]["metric_params"] or 1000)
    # Bytes shrink with the bits and the sparsity (so the front is a real trade-off), plus noise.
    nbytes = (
        int(params * cfg.weight_bits * (1 - 0.9 * cfg.sparsity) / 8 * rng.uniform(0.9, 1.1)) + 64
    )
    clean = float(rng.uniform(0.6, 0.98))
    out = []
    for r in template:
        row = {**r, **ident}
        row["metric_clean_acc"] = clean
        row["metric_bytes"] = nbytes
        if r["attack"] not in (None, "none"):
            acc = clean * float(np.exp(-r["eps"] * rng.uniform(1, 15)))
            n = int(r["metric_samples"] or 60)
            row["metric_robust_acc"] = round(acc * n) / n
        out.append(row)
    return out


def grid_configs(study: Study) -> list[TrialConfig]:
    from grid.space import points

    return [t for p in points(study) for t in study.point_trials(p)]


def populate(
    loc: Location, study: Study, template: list[dict[str, Any]], threads: int
) -> dict[str, float]:
    """Write the study's rows through ``ParquetSink``, one call per key, from ``threads`` writers."""
    sink = ParquetSink(loc.uri, study.name, "scale-benchmark")
    started = "2026-01-01T00:00:00+00:00"
    cfgs = grid_configs(study)
    counts = {"complete": 0, "failed": 0, "missing": 0, "stale": 0}

    def kind(cfg: TrialConfig) -> str:
        u = int(hashlib.sha256(cfg.key.encode()).hexdigest()[:8], 16) / 2**32
        if u < SHARES["missing"]:
            return "missing"
        if u < SHARES["missing"] + SHARES["failed"]:
            return "failed"
        return "complete"

    def write(cfg: TrialConfig) -> str:
        k = kind(cfg)
        if k == "failed":
            sink(cfg.key, [failed_row(cfg, "scale benchmark: a trial that failed", started)])
        elif k == "complete":
            rows = key_rows(cfg, template, started)
            sink(cfg.key, rows)
            u = int(hashlib.sha256(cfg.key.encode()).hexdigest()[8:16], 16) / 2**32
            if u < SHARES["stale"]:  # an older revision's row set of the same config: another key
                old = hashlib.sha256(
                    f"{cfg.key}-revision-{RESULTS_REVISION - 1}".encode()
                ).hexdigest()[:16]
                sink(old, [{**r, "key": old, "revision": RESULTS_REVISION - 1} for r in rows])
                return "complete+stale"
        return k

    t0 = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for k in pool.map(write, cfgs, chunksize=64):
            for part in k.split("+"):
                counts[part] += 1
            done += 1
            if done % 10_000 == 0:
                print(
                    f"  ... {done:,} of {len(cfgs):,} keys in {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
    return {**counts, "write_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------
# moto's S3 server, in a subprocess, counting requests


class Moto:
    """moto's S3 server on 127.0.0.1 in a subprocess; ``requests`` counts its access-log lines."""

    # werkzeug colours some lines (a 206 partial read: every ranged GET) with ANSI codes
    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) /')

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.requests = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        os.environ.update(self.env)  # pyarrow's S3 client here and in every subprocess
        try:
            self._wait(port)
        except BaseException:
            self.stop()
            raise

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True
        ).create_dir(BUCKET)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if self.LINE.search(line):
                with self._lock:
                    self.requests += 1

    def count(self) -> int:
        """Requests so far, once the server's log has gone quiet."""
        last = -1
        while True:
            time.sleep(0.3)
            with self._lock:
                now = self.requests
            if now == last:
                return now
            last = now

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------
# The operations


def grid_cmd(*args: str, timeout: float) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "grid.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"grid {' '.join(args)}: exit {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def operations(
    study_file: Path, results: str, study: Study, timeout: float, tmp: Path
) -> dict[str, Callable[[], str]]:
    folder = study.results_dir(results).uri

    def status() -> str:
        out = grid_cmd("status", str(study_file), "--results", results, timeout=timeout)
        return out.splitlines()[0]

    def planning() -> str:
        state = StudyState(study, folder)
        p = plan(study, state)
        return f"{len(p.payloads):,} of {p.total:,} trials left"

    def pareto() -> str:
        out = grid_cmd("pareto", folder, timeout=timeout)
        return out.splitlines()[0][:100]

    def report() -> str:
        out = grid_cmd("report", folder, "--out", str(tmp / "report.html"), timeout=timeout)
        return out.strip()

    def curve() -> str:
        import warnings

        from analysis.effects import robustness_curve
        from analysis.query import connect

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stale keys' warning
            con = connect(folder)
        df = robustness_curve(con, by=["cfg_bits"])
        return f"{len(df)} curve points"

    return {"status": status, "plan": planning, "pareto": pareto, "report": report, "curve": curve}


@contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _cpu() -> float:
    """CPU seconds of this process (all its threads) and of its finished subprocesses."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def measure(
    fn: Callable[[], str], repeat: int, moto: Moto | None
) -> tuple[float, float, int | None, str]:
    """Best wall and CPU seconds of up to ``repeat`` runs (one when a run is slow), the S3
    requests of one run, and what it said.  CPU seconds (user + system, the grid subprocess
    included; moto's server not) are what to compare on a machine others load too."""
    best, best_cpu, reqs, said = math.inf, math.inf, None, ""
    for i in range(repeat):
        before = moto.count() if moto else 0
        c0, t0 = _cpu(), time.perf_counter()
        with _quiet():
            said = fn()
        dt, dc = time.perf_counter() - t0, _cpu() - c0
        if moto and i == 0:
            reqs = moto.count() - before
        best, best_cpu = min(best, dt), min(best_cpu, dc)
        if dt > REPEAT_UNDER_S:
            break
    return best, best_cpu, reqs, said


# ---------------------------------------------------------------------------
# Output


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    return math.log(t2 / t1) / math.log(n2 / n1)


def _layout(r: dict[str, Any]) -> str:
    return str(r.get("layout", "per-key"))  # runs before --compact have no layout


def _series(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(operation, layout) pairs measured, in table order: each operation per-key then
    compacted, and ``grid compact`` itself between them."""
    have = {(r["op"], _layout(r)) for r in rows}
    order = [(op, "per-key") for op in OPS] + [("compact", "compacted")]
    order += [(op, "compacted") for op in OPS]
    return [s for s in order if s in have]


def table(results: list[dict[str, Any]], where: str) -> str:
    rows = [r for r in results if r["where"] == where]
    sizes = sorted({r["n"] for r in rows})
    series = _series(rows)
    get = {(r["op"], _layout(r), r["n"]): r for r in rows}
    layouts = {lay for _, lay in series}

    def name(op: str, lay: str) -> str:
        return op if len(layouts) == 1 or op == "compact" else f"{op} ({lay})"

    width = max([10, *(len(name(o, lay)) for o, lay in series)])
    head = (
        f"{where}: wall/CPU seconds (growth exponents of the wall and the CPU time vs the previous "
        "size; WORSE: the CPU's > 1.2, worse than linear)"
    )
    lines = [head, f"  {'operation':<{width}}" + "".join(f"{f'N={n:,}':>{CELL}}" for n in sizes)]
    for op, lay in series:
        cells = []
        for i, n in enumerate(sizes):
            r = get.get((op, lay, n))
            if r is None or r["seconds"] is None:
                cells.append(f"{(r['error'] or 'failed') if r else '-':>{CELL}}")
                continue
            cell = f"{r['seconds']:.2f}s"
            if r.get("cpu") is not None:
                cell += f"/{r['cpu']:.2f}s"
            prev = get.get((op, lay, sizes[i - 1])) if i else None
            if prev and prev["seconds"]:
                e = exponent(prev["seconds"], r["seconds"], sizes[i - 1], n)
                cell += f" (N^{e:.2f}"
                if prev.get("cpu") and r.get(
                    "cpu"
                ):  # the CPU exponent decides: others load the machine
                    e = exponent(prev["cpu"], r["cpu"], sizes[i - 1], n)
                    cell += f"/{e:.2f}"
                cell += f"{' WORSE' if e > 1.2 else ''})"
            cells.append(f"{cell:>{CELL}}")
        lines.append(f"  {name(op, lay):<{width}}" + "".join(cells))
    if any(r.get("requests") is not None for r in rows):
        lines.append(f"{where}: object-storage requests per operation (one run)")
        for op, lay in series:
            cells = []
            for n in sizes:
                r = get.get((op, lay, n))
                q = r.get("requests") if r else None
                cells.append(f"{(f'{q:,} ({q / n:.2f}/key)' if q is not None else '-'):>{CELL}}")
            lines.append(f"  {name(op, lay):<{width}}" + "".join(cells))
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, before: list[dict[str, Any]] | None) -> None:
    """CPU seconds (the figure to compare on a shared machine) against N, log-log, one panel
    per location: per-key files dashed, compacted solid, ``grid compact`` itself dash-dotted;
    ``before`` (an earlier run) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wheres = sorted({r["where"] for r in results}, key=lambda w: w != "local")
    fig, axes = plt.subplots(
        1, len(wheres), figsize=(6.0 * len(wheres), 4.8), squeeze=False, sharey=True
    )
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip((*OPS, "compact"), cycle, strict=False))
    styles = {"per-key": "--", "compacted": "-"}
    for ax, where in zip(axes[0], wheres, strict=True):
        runs = [("before", r, ":") for r in before or []] + [("", r, "") for r in results]
        for op in (*OPS, "compact"):
            for lay in LAYOUTS:
                for label in ("before", ""):
                    pts = sorted(
                        (r["n"], r["cpu"] or r["seconds"])  # runs before CPU was kept: wall
                        for lb, r, _ in runs
                        if lb == label and r["where"] == where and r["op"] == op
                        and _layout(r) == lay and r["seconds"]
                    )  # fmt: skip
                    if not pts:
                        continue
                    xs, ys = zip(*pts, strict=True)
                    style = ":" if label else "-." if op == "compact" else styles[lay]
                    name = op if op == "compact" else f"{op}, {lay}"
                    ax.plot(
                        xs, ys, style, marker="o", ms=4, color=colours[op],
                        label=f"{name} (before)" if label else name, alpha=0.5 if label else 1,
                    )  # fmt: skip
        ns = sorted({r["n"] for r in results if r["where"] == where})
        if ns:
            ax.axhline(10, color="grey", lw=0.8, ls="--")
            ax.text(ns[0], 11, "10 s", color="grey", fontsize=8)  # the goal (wall) for status/plan
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trial keys in the results (N)")
        ax.set_title(f"{where} (dashed: per-key files; solid: after grid compact)", fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
    axes[0][0].set_ylabel("CPU seconds (the grid subprocess included)")
    axes[0][-1].legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.suptitle(
        "robustgrid: per-study operations against the study's size (benchmarks/scale.py)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------


def prepare(
    where: str, n: int, root: Path, keep: bool, threads: int
) -> tuple[Path, str, Study, dict[str, Any]]:
    """The study file, the results location and the populated folder's counts (reused with --keep)."""
    studies = root / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    results = str(root / "local" / f"n{n}") if where == "local" else f"s3://{BUCKET}/n{n}"
    study_file = studies / f"scale-{n}-{where}.yaml"
    study_file.write_text(study_yaml(n, results))
    study = load_study(str(study_file))
    loc = study.results_dir()
    marker = root / "local" / f"n{n}.json"
    if where == "local" and keep and marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("format") == FORMAT and info.get("n") == study.grid_size:
            print(f"{where} N={study.grid_size:,}: reusing {loc} ({info})", flush=True)
            return study_file, results, study, info
    if where == "local" and loc.local is not None and loc.local.exists():
        shutil.rmtree(loc.local)
        marker.unlink(missing_ok=True)
    print(
        f"{where} N={study.grid_size:,}: writing the rows through ParquetSink to {loc} ...",
        flush=True,
    )
    template = template_rows(root, study)
    info = {"format": FORMAT, "n": study.grid_size, **populate(loc, study, template, threads)}
    print(f"  {info}", flush=True)
    if where == "local":
        marker.write_text(json.dumps(info))
    return study_file, results, study, info


def time_ops(
    where: str, layout: str, study_file: Path, res: str, study: Study, ops: list[str],
    args: argparse.Namespace, moto: Moto | None, info: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """Each of ``ops`` on one folder, one entry each (skipped ones included)."""
    out = []
    n = study.grid_size
    with tempfile.TemporaryDirectory() as tmp:
        fns = operations(study_file, res, study, args.timeout, Path(tmp))
        for op in ops:
            sec: float | None
            cpu: float | None
            reqs: int | None
            if layout == "per-key" and op in WIDE_OPS and n > args.skip_per_key_above:
                sec, cpu, reqs, said, err = None, None, None, "", SKIPPED
            else:
                try:
                    sec, cpu, reqs, said = measure(fns[op], args.repeat, moto)
                    err = ""
                except (subprocess.TimeoutExpired, RuntimeError) as e:
                    sec, cpu, reqs, said, err = None, None, None, "", type(e).__name__
                    print(f"  {op}: {e}", flush=True)
            out.append(_entry(where, n, op, layout, sec, cpu, reqs, said, err, info))
    return out


def _entry(
    where: str, n: int, op: str, layout: str, sec: float | None, cpu: float | None,
    reqs: int | None, said: str, err: str, info: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    rq = f", {reqs:,} requests" if reqs is not None else ""
    shown = f"{sec:.2f}s (cpu {cpu:.2f}s)" if sec is not None and cpu is not None else err
    print(f"  {where} N={n:,} {op} ({layout}): {shown}{rq}  | {said}", flush=True)
    return {"where": where, "n": n, "op": op, "layout": layout, "seconds": sec, "cpu": cpu,
            "requests": reqs, "said": said, "error": err, "populated": info}  # fmt: skip


def compacted(where: str, n: int, root: Path, res: str, keep: bool) -> tuple[Path, str, Study]:
    """The folder to compact: local with --keep a hard-linked copy of the per-key folder
    (compaction writes new files and deletes old ones, never rewrites one, so the per-key
    folder stays whole for the next run); otherwise the folder itself."""
    if where == "local" and keep:
        src, dst = Path(res), root / "local" / f"n{n}-compacted"
        shutil.rmtree(dst, ignore_errors=True)
        t0 = time.perf_counter()
        shutil.copytree(src, dst, copy_function=os.link)
        print(f"  linked a copy of {src} to {dst} in {time.perf_counter() - t0:.1f}s", flush=True)
        res = str(dst)
    study_file = root / "studies" / f"scale-{n}-{where}-compacted.yaml"
    study_file.write_text(study_yaml(n, res))
    return study_file, res, load_study(str(study_file))


def time_compact(
    where: str, study: Study, moto: Moto | None, args: argparse.Namespace, info: dict[str, Any]
) -> dict[str, Any]:
    """``grid compact FOLDER`` in a subprocess, once (a second run has nothing left to do)."""
    folder = study.results_dir().uri

    def run() -> str:
        return grid_cmd("compact", folder, timeout=args.compact_timeout).strip().splitlines()[-1]

    try:
        sec, cpu, reqs, said = measure(run, 1, moto)
        err = ""
    except (subprocess.TimeoutExpired, RuntimeError) as e:
        sec, cpu, reqs, said, err = None, None, None, "", type(e).__name__
        print(f"  compact: {e}", flush=True)
    return _entry(where, study.grid_size, "compact", "compacted", sec, cpu, reqs, said, err, info)


def front3(n: int) -> None:
    """The 3-objective front of ``n`` points: the sweep vs the pairwise check, one run."""
    from analysis.fronts import _nondominated_pairwise, nondominated

    rng = np.random.default_rng(0)
    bits = rng.uniform(1, 32, n)
    nbytes = np.round(1e5 * bits / 8 * rng.uniform(0.9, 1.1, n))  # the trade-off, as key_rows
    clean = np.round(rng.uniform(0.6, 0.98, n), 3)  # 3 decimals: ties, as real accuracies
    robust = np.round(clean * np.exp(-0.1 * rng.uniform(1, 15, n)) * (bits / 32) ** 0.1, 3)
    values = np.c_[robust, nbytes, clean]
    maximize = [True, False, True]
    times = {}
    for name, fn in (("sweep", lambda: nondominated(values, maximize)),
                     ("pairwise", lambda: _nondominated_pairwise(values * [-1, 1, -1]))):  # fmt: skip
        c0, t0 = time.process_time(), time.perf_counter()
        mask = fn()
        times[name] = (time.perf_counter() - t0, time.process_time() - c0, int(mask.sum()))
    (ws, cs, fs), (wp, cp, fp) = times["sweep"], times["pairwise"]
    if fs != fp:
        raise SystemExit(f"front3: the sweep kept {fs} points, the pairwise check {fp}")
    print(
        f"front3 N={n:,} points: sweep {ws:.3f}s (cpu {cs:.3f}s), pairwise {wp:.2f}s "
        f"(cpu {cp:.2f}s): {cp / max(cs, 1e-9):.0f}x less CPU; front {fs:,} points"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default="1000,10000",
        help="trial keys per study, comma-separated (default 1000,10000)",
    )
    ap.add_argument("--where", default="local,s3", help="local, s3 or both (default local,s3)")
    ap.add_argument(
        "--s3-sizes", help="sizes on S3 (default: --sizes); moto serves ~10^2-10^3 requests/s"
    )
    ap.add_argument(
        "--ops", default=",".join(OPS), help=f"operations to time (default {','.join(OPS)})"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="best of this many runs for quick operations"
    )
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "robustgrid-scale"),
                    help="where the study files, the template trial and local results go")  # fmt: skip
    ap.add_argument(
        "--keep", action="store_true", help="keep (and reuse) the populated local folders"
    )
    ap.add_argument("--threads", type=int, default=8, help="writers that populate a folder at once")
    ap.add_argument(
        "--timeout", type=float, default=900, help="seconds before a CLI command is given up"
    )
    ap.add_argument("--json", help="write the measurements here (a JSON list)")
    ap.add_argument("--png", help="write the log-log figure here")
    ap.add_argument("--before", help="a previous --json to draw dotted in the figure")
    ap.add_argument("--compact", action="store_true",
                    help="also time grid compact, then every operation on the compacted folder")  # fmt: skip
    ap.add_argument("--skip-per-key-above", type=int, default=20_000, metavar="N",
                    help="skip pareto, report and curve on per-key files past N keys (default 20000)")  # fmt: skip
    ap.add_argument("--compact-timeout", type=float, default=3600,
                    help="seconds before grid compact is given up (default 3600)")  # fmt: skip
    ap.add_argument("--from-json", metavar="FILES",
                    help="comma-separated --json files of earlier runs: print their tables, draw --png; measure nothing")  # fmt: skip
    ap.add_argument("--front3", type=int, metavar="N",
                    help="time the 3-objective front of N points (sweep vs pairwise) and exit")  # fmt: skip
    args = ap.parse_args()
    if args.front3:
        front3(args.front3)
        return
    if args.skip_per_key_above < 0:
        raise SystemExit(f"--skip-per-key-above: {args.skip_per_key_above} must be at least 0")
    if args.from_json:
        loaded: list[dict[str, Any]] = []
        for f in (x.strip() for x in args.from_json.split(",") if x.strip()):
            try:
                loaded += json.loads(Path(f).read_text())
            except (OSError, ValueError) as err:
                raise SystemExit(f"--from-json: {f!r}: {err}") from None
        summarise(loaded, sorted({r["where"] for r in loaded}, key=lambda w: w != "local"), args)
        return

    def parse_sizes(flag: str, text: str) -> list[int]:
        try:
            sizes = sorted({int(s) for s in text.split(",") if s.strip()})
        except ValueError:
            raise SystemExit(f"{flag}: {text!r} must be integers, comma-separated") from None
        if not sizes or sizes[0] < 1:
            raise SystemExit(f"{flag}: {text!r} must be positive integers, comma-separated")
        for n in sizes:
            try:
                axes_for(n)  # a size the axes cannot make fails before anything is written
            except ValueError as err:
                raise SystemExit(f"{flag}: {err}") from None
        return sizes

    sizes_of = {"local": parse_sizes("--sizes", args.sizes)}
    sizes_of["s3"] = (
        parse_sizes("--s3-sizes", args.s3_sizes) if args.s3_sizes else sizes_of["local"]
    )
    wheres = [w.strip() for w in args.where.split(",") if w.strip()]
    bad = [w for w in wheres if w not in ("local", "s3")]
    if bad or not wheres:
        raise SystemExit(f"--where: {args.where!r} must be local, s3 or both")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops or any(o not in OPS for o in ops):
        raise SystemExit(f"--ops: {args.ops!r}: choose from {', '.join(OPS)}")
    root = Path(args.root)
    results: list[dict[str, Any]] = []
    moto = Moto() if "s3" in wheres else None
    try:
        for where in wheres:
            m = moto if where == "s3" else None
            for n in sizes_of[where]:
                study_file, res, study, info = prepare(where, n, root, args.keep, args.threads)
                results += time_ops(where, "per-key", study_file, res, study, ops, args, m, info)
                if args.compact:
                    c_file, c_res, c_study = compacted(where, n, root, res, args.keep)
                    results.append(time_compact(where, c_study, m, args, info))
                    if results[-1]["seconds"] is not None:
                        results += time_ops(
                            where, "compacted", c_file, c_res, c_study, ops, args, m, info
                        )
                    if c_res != res:
                        shutil.rmtree(c_res)
                if where == "s3":  # moto holds it in memory
                    Location(res).fs.delete_dir_contents(f"{BUCKET}/n{n}")
    finally:
        if moto:
            moto.stop()
    summarise(results, wheres, args)
    if not args.keep and "local" in wheres:  # this run's local folders only, not a --keep run's
        for n in sizes_of["local"]:
            shutil.rmtree(root / "local" / f"n{n}", ignore_errors=True)
            (root / "local" / f"n{n}.json").unlink(missing_ok=True)


def summarise(results: list[dict[str, Any]], wheres: list[str], args: argparse.Namespace) -> None:
    print()
    for where in wheres:
        print(table(results, where))
        print()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        before = json.loads(Path(args.before).read_text()) if args.before else None
        plot(results, Path(args.png), before)


if __name__ == "__main__":
    main()
