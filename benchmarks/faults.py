"""Every trial complete exactly once under faults: random trial exceptions, a node kill,
a driver kill and its resume.

On a multi-node Ray on this machine (``ray.cluster_utils.Cluster``: a head with
no CPUs and two 1-CPU worker nodes), in one run:

  1. the peer: the study with no faults, fresh results;
  2. the same study, fresh results, under faults:
     - every attempt of a fold raises with probability ``--rate`` (default 0.15),
       half of them after its rows were stored (the retry must not add a second set);
     - a worker node is killed without warning once a quarter of the trials are
       complete (a replacement joins, as an autoscaler would bring one);
     - the driver is killed (SIGKILL) once half are complete, then ``grid resume``
       finishes the study.

Prints, for each run: trials expected, completed, lost (no complete row set),
duplicated (a (key, attack, eps) row more than once, or a second file for a key),
faults injected, retries seen, and the wall time of the faulty run against the
peer's.

    python benchmarks/faults.py [--study FILE] [--rate 0.15]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from analysis.query import connect
from grid.spec import Study, load_study
from grid.store import key_status

HERE = Path(__file__).parent
GRID = [sys.executable, "-m", "grid.cli"]
# `grid` whose trials and sink raise at random (tests/injected.py wraps the real ones)
INJECTED = [sys.executable, "-m", "tests.injected"]


def _start(
    study_file: Path, results: Path, address: str, cmd: str = "run", faults: list[str] | None = None
) -> subprocess.Popen[str]:
    grid = [*INJECTED, *faults, "--"] if faults else GRID
    return subprocess.Popen(
        [*grid, cmd, str(study_file), "--results", str(results), "--address", address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _complete(folder: Path) -> int:
    return sum(1 for v in key_status(folder).values() if v == "complete")


def _wait_for(folder: Path, n: int, driver: subprocess.Popen[str], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while _complete(folder) < n:
        if driver.poll() is not None:
            return  # finished (or died) before the mark
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder}: {n} trials not complete after {timeout:.0f}s")
        time.sleep(0.5)


def count(study: Study, folder: Path) -> dict[str, int]:
    """Trials expected / completed / lost / duplicated, from the Parquet files alone."""
    expected = {t.key for t in study.trials()}
    con = connect(folder)
    done = {
        k for (k,) in con.execute(
            "SELECT key FROM rows GROUP BY key HAVING bool_and(status = 'complete')"
        ).fetchall()
    }  # fmt: skip
    dup_rows = con.execute(
        "SELECT count(*) FROM (SELECT key, fold, attack, eps FROM rows "
        "GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]  # fmt: skip
    files = [p.name for p in (folder / "rows").iterdir()]
    extra_files = len(files) - len({f.split(".")[0] for f in files})
    return {
        "expected": len(expected),
        "completed": len(expected & done),
        "lost": len(expected - done),
        "duplicated": int(dup_rows) + extra_files,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--study", default=str(HERE / "studies" / "faults.yaml"))
    ap.add_argument("--rate", type=float, default=0.15, help="chance that an attempt raises")
    args = ap.parse_args()
    study_file = Path(args.study)
    study = load_study(study_file)
    n = study.grid_size

    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ROBUSTGRID_CACHE"] = str(tmp / "cache")
        c = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
        )
        workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        try:
            # 1. the peer: no faults
            t0 = time.perf_counter()
            peer = _start(study_file, tmp / "clean", c.address)
            out, _ = peer.communicate()
            clean_wall = time.perf_counter() - t0
            if peer.returncode != 0:
                raise SystemExit(f"clean run failed:\n{out[-3000:]}")
            clean = count(study, tmp / "clean" / study.name)

            # 2. under faults, on a fresh cluster
            c.shutdown()
            faults = ["--fault-rate", str(args.rate), "--faults", str(tmp / "faults")]
            c = Cluster(
                initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
            )
            workers = [c.add_node(num_cpus=1) for _ in range(2)]
            c.wait_for_nodes()
            folder = tmp / "faulty" / study.name
            outputs = []
            t0 = time.perf_counter()
            driver = _start(study_file, tmp / "faulty", c.address, faults=faults)
            _wait_for(folder, n // 4, driver)
            time.sleep(1.0)  # both nodes into their next trial
            c.remove_node(workers[0], allow_graceful=False)
            c.add_node(num_cpus=1)
            print(f"  node killed at {_complete(folder)}/{n} complete", file=sys.stderr)
            _wait_for(folder, n // 2, driver)
            killed_at = _complete(folder)
            os.killpg(driver.pid, signal.SIGKILL)
            outputs.append(driver.communicate()[0])
            print(f"  driver killed at {killed_at}/{n} complete", file=sys.stderr)
            resume = _start(study_file, tmp / "faulty", c.address, cmd="resume", faults=faults)
            outputs.append(resume.communicate()[0])
            faulty_wall = time.perf_counter() - t0
            faulty = count(study, folder)
            faults = len(list((tmp / "faults").glob("*"))) if (tmp / "faults").is_dir() else 0
            retries = sum(o.count("[retry]") for o in outputs)
            if resume.returncode != 0:
                print(f"resume exited {resume.returncode}:\n{outputs[-1][-3000:]}", file=sys.stderr)
        finally:
            c.shutdown()

    print(
        f"\nstudy {study.name}: {n} trials on 2 worker nodes (1 CPU each), fault rate {args.rate}"
    )
    print(f"{'run':<44}{'expected':>9}{'completed':>10}{'lost':>6}{'duplicated':>11}{'wall s':>9}")
    print(f"{'clean (peer)':<44}{clean['expected']:>9}{clean['completed']:>10}{clean['lost']:>6}"
          f"{clean['duplicated']:>11}{clean_wall:>9.1f}")  # fmt: skip
    print(f"{'faults + node kill + driver kill + resume':<44}{faulty['expected']:>9}"
          f"{faulty['completed']:>10}{faulty['lost']:>6}{faulty['duplicated']:>11}{faulty_wall:>9.1f}")  # fmt: skip
    print(f"injected trial exceptions: {faults}; Tune retries seen by the drivers: {retries}; "
          f"node kills: 1; driver kills: 1")  # fmt: skip
    print(f"faulty / clean wall time: {faulty_wall / clean_wall:.2f}")
    ok = faulty["lost"] == 0 and faulty["duplicated"] == 0 and clean["lost"] == 0
    print("lost 0, duplicated 0: " + ("yes" if ok else "NO"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
