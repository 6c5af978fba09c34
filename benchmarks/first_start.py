#!/usr/bin/env python
"""How long a Space's first start takes, step by step (prints seconds; asserts nothing).

    python benchmarks/first_start.py [--tiny]

Runs first-start provisioning (`covid_xray.provision.Provisioner`) into an empty temporary
cache, with the outside world stood in for by a loopback HTTP server (127.0.0.1) serving the
dataset as Kaggle serves it (a zip built from $COVID_XRAY_DATA in a temp folder) and a synthetic
Keras-2 CheXNet weights file (same size and graph as the real one). The head is trained with the
shipped recipe (`--tiny`: the tests' tiny budget). Then a second start on the same cache, which
must do no work. Download times over loopback are a floor: a Space adds its network's time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="train the head on the tests' tiny budget")
    args = parser.parse_args(argv)

    from covid_xray import config, provision
    from tests.standins import LoopbackServer, make_chexnet_weights, make_dataset_zip
    from tests.test_provision import TINY_HEAD

    data_dir = config.resolve_data_dir()
    with tempfile.TemporaryDirectory(prefix="first-start-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        routes = {
            "/dataset.zip": make_dataset_zip(data_dir, tmp / "dataset.zip"),
            "/weights.h5": make_chexnet_weights(tmp / "weights.h5"),
        }
        print(f"stand-in files built in {time.perf_counter() - t0:.1f} s "
              f"(dataset zip {routes['/dataset.zip'].stat().st_size / 1e6:.1f} MB, "
              f"weights {routes['/weights.h5'].stat().st_size / 1e6:.1f} MB)", flush=True)
        os.environ[config.HOME_ENV_VAR] = str(tmp / "home")
        for name in (config.DATA_ENV_VAR, config.CHEXNET_WEIGHTS_ENV_VAR):
            os.environ.pop(name, None)
        with LoopbackServer(routes) as server:
            settings = provision.Settings(
                dataset_source=server.url("/dataset.zip"),
                chexnet_source=server.url("/weights.h5"),
                head_train_args=TINY_HEAD if args.tiny else (),
            )
            provisioner = provision.Provisioner(settings)
            timings = {}
            for step, present, run in (
                ("dataset", provisioner.dataset_present, provisioner.provision_dataset),
                ("weights", provisioner.weights_present, provisioner.provision_weights),
                ("head", provisioner.head_present, provisioner.provision_head),
            ):
                assert not present(), f"{step} already present in an empty cache"
                start = time.perf_counter()
                run()
                timings[step] = time.perf_counter() - start
                print(f"{timings[step]:7.1f} s  {provision.STEP_TITLES[step]}", flush=True)
            print(f"{sum(timings.values()):7.1f} s  first start in all", flush=True)
            hits = dict(server.hits)
            start = time.perf_counter()
            status = provision.Provisioner(settings).run()
            again = time.perf_counter() - start
            states = {s: status.get(s).state for s in provision.STEPS}
            print(f"{again:7.2f} s  second start ({states}; new downloads: "
                  f"{sum(server.hits.values()) - sum(hits.values())})", flush=True)
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
