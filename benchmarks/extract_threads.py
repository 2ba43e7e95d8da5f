"""`dgnet extract` images/s by CPU thread count, on an idle machine and beside busy processes.

    python benchmarks/extract_threads.py                  # cpu-profile DG-Net, 512 synthetic crops
    python benchmarks/extract_threads.py --busy 2 --no-write

Each measurement is a fresh `dgnet extract` process: `--threads 1`, `--threads <cores>` (torch's own
default) and no flag (what the command picks: `dgnet.inference.extract.idle_cores`), first with
nothing else running, then beside `--busy` processes that each keep a core spinning (a training
run, another extraction). The figure is the command's own images/s (model loading excluded).
Results go to their section of benchmarks/RESULTS.md and RESULTS.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dgnet.data.synthetic import generate_dataset
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.profiles import get_profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module
from common import RESULTS, machine, write_results

SPIN = "while True: pass"


def images_per_s(model: Path, images: Path, out: Path, threads: int | None) -> float:
    flag = [] if threads is None else ["--threads", str(threads)]
    argv = [str(Path(sys.executable).with_name("dgnet")), "extract", "--model", str(model),
            "--images", str(images), "--out", str(out), *flag]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return float(re.search(r"([\d.]+) images/s", done.stdout).group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="spinning processes in the busy case")
    parser.add_argument("--ids", type=int, default=64, help="synthetic identities (8 images each)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    cores, info, rows = len(os.sched_getaffinity(0)), machine(), []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "data", seed=0, num_ids=args.ids)
        images = tmp / "data" / "bounding_box_train"
        config = get_profile("cpu", num_classes=args.ids)
        model = save_model(tmp / "model.pt", DGNet(config).eval(), "dgnet", config)
        for busy in (0, args.busy):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                time.sleep(60 if busy else 0)  # the 1-minute load average catches up
                load = os.getloadavg()[0]
                for threads in (1, cores, None):
                    speed = images_per_s(model, images, tmp / "f.npy", threads)
                    rows.append((busy, f"{load:.1f}", "picked" if threads is None else str(threads), speed))
                    print(rows[-1], flush=True)
            finally:
                for spinner in spinners:
                    spinner.kill()
    columns = ["spinning processes", "load average", "threads", "images/s"]
    table = [[busy, load, threads, f"{speed:.1f}"] for busy, load, threads, speed in rows]
    print("\n".join(" | ".join(map(str, row)) for row in [columns, *table]))
    if not args.no_write:
        given = argv if argv is not None else sys.argv[1:]
        write_results(RESULTS, "extract-threads", {
            "title": "`dgnet extract` by thread count (`benchmarks/extract_threads.py`)",
            "command": "python benchmarks/extract_threads.py " + " ".join(given),
            "machine": info, "columns": columns, "table": table,
            "text": [f"cpu-profile DG-Net (random weights), {8 * args.ids} synthetic 128x64 crops, batch "
                     "64. 'picked' = no --threads: the cores the 1-minute load average shows idle. The "
                     "spinners run 60 s before the first measurement, so that the load average sees them."]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
