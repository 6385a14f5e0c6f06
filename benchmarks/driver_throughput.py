"""How many trials per second Tune's driver sustains, with trials that do nothing.

Where the driver becomes the bottleneck of a large cluster: a trial that takes
T seconds on W workers needs W / T trials per second from the driver.  One run
measures, on a local Ray with this machine's CPUs:

  1. Tune: ``--trials`` trivial trials (a function trainable that reports one
     result) through ``tune.Tuner`` with ``reuse_actors`` and no storage
     syncing, as robustgrid runs them;
  2. the peer: the same number of trivial Ray tasks (``ray.get`` of
     ``f.remote()``), the floor of Ray's own per-task cost.

Prints trials per second for both and the ratio.

    python benchmarks/driver_throughput.py [--trials 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def trivial(config: dict[str, int]) -> None:
    from ray import tune

    tune.report({"value": config["i"]})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=300)
    args = ap.parse_args()
    import logging

    import ray
    from ray import tune

    ray.init(
        address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    cpus = int(ray.available_resources().get("CPU", 1))

    @ray.remote(num_cpus=1)
    def task(i: int) -> int:
        return i

    ray.get([task.remote(i) for i in range(cpus * 4)])  # workers started before timing
    t0 = time.perf_counter()
    ray.get([task.remote(i) for i in range(args.trials)])
    tasks_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(
            tune.with_resources(trivial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(args.trials)))},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=cpus),
            run_config=tune.RunConfig(name="driver", storage_path=tmp, verbose=0),
        )
        t0 = time.perf_counter()
        results = tuner.fit()
        tune_s = time.perf_counter() - t0
    ray.shutdown()
    assert len(results) == args.trials and not results.errors
    print(f"{args.trials} trivial trials on {cpus} CPU(s)")
    print(f"Tune driver: {args.trials / tune_s:8.1f} trials/s ({tune_s:.1f} s)")
    print(f"Ray tasks:   {args.trials / tasks_s:8.1f} tasks/s ({tasks_s:.2f} s)  (peer)")
    print(f"Tune / Ray tasks throughput: {tasks_s / tune_s:.3f}")


if __name__ == "__main__":
    main()
