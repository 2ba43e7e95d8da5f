"""Two CPU processes (gloo) run the DG-Net loop: disjoint identities, identical weights, rank 0 writes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dgnet.data.manifest import build_manifest
from dgnet.data.samplers import IdentityPairSampler
from dgnet.data.synthetic import generate_dataset
from dgnet.models.config import get_profile
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.training.hooks import TrainingHooks
from dgnet.training.loop import training_labels
from dgnet.training.schedule import ScheduleConfig

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)
WORLD = 2
BATCH = 2  # per stream and rank: 2 streams x 2 x 2 ranks = 8 distinct ids, all 8 training ids
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, data: str, teacher: str, base: str) -> None:
    """One rank: join the group, train 2 iterations, save what it saw and its final weights."""
    import os

    import dgnet.training.trainer as trainer_module
    from dgnet.training.trainer import DGNetTrainConfig, train_dgnet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    seen: list[tuple[int, list[int]]] = []
    models: list[DGNet] = []
    events: list[str] = []

    class RecordingSampler(IdentityPairSampler):
        def __init__(self, labels, *args, **kwargs):
            super().__init__(labels, *args, **kwargs)
            self.all_labels = np.asarray(labels)

        def batch(self, iteration):
            batch = super().batch(iteration)
            seen.append((iteration, self.all_labels[batch.indices].tolist()))
            return batch

    class RecordingDGNet(DGNet):
        def __init__(self, cfg):
            super().__init__(cfg)
            models.append(self)

    class Events(TrainingHooks):
        def on_start(self, *args):
            events.append("start")

        def on_iteration(self, *args):
            events.append("iteration")

        def on_checkpoint(self, *args):
            events.append("checkpoint")

        def on_end(self, *args):
            events.append("end")

    trainer_module.IdentityPairSampler = RecordingSampler
    trainer_module.DGNet = RecordingDGNet
    try:
        cfg = DGNetTrainConfig(
            iterations=2, batch_size=BATCH, log_every=1, eval_every=0, image_every=0, checkpoint_every=0,
            num_workers=0, device="cpu", deterministic=True, schedule=ScheduleConfig(warmup_start=0),
        )  # fmt: skip
        frame = build_manifest(data)
        train_dgnet(frame, get_profile("tiny"), cfg, [teacher], Path(base) / f"out{rank}", hooks=[Events()])
        state = {k: v.detach().clone() for k, v in models[0].state_dict().items()}
        torch.save({"seen": seen, "state": state, "events": events}, Path(base) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_in_lockstep(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, seed=0, num_ids=16, num_cameras=3)
    frame = build_manifest(data)
    label_map = training_labels(frame)
    assert len(label_map) == 2 * BATCH * WORLD
    teacher_cfg = get_profile("tiny", num_classes=len(label_map))
    teacher = save_model(tmp_path / "teacher.pt", ReidBaseline(teacher_cfg), "teacher", teacher_cfg,
                         extra={"label_map": label_map})

    context = mp.start_processes(_worker, args=(_free_port(), str(data), str(teacher), str(tmp_path)),
                                 nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish within {TIMEOUT_S} s")

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    # Disjoint identities: each iteration, the two ranks' batches share no person.
    for (it0, ids0), (it1, ids1) in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True):
        assert it0 == it1 and not set(ids0) & set(ids1)
    assert [it for it, _ in ranks[0]["seen"]] == [0, 1]
    # Identical weights and BN statistics on both ranks after the run.
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"ranks disagree on {different[:5]}"
    # Only rank 0 calls hooks and writes.
    assert ranks[0]["events"] == ["start", "iteration", "iteration", "checkpoint", "end"]
    assert ranks[1]["events"] == []
    assert not (tmp_path / "out1").exists()
    assert (tmp_path / "out0" / "model.pt").is_file()
    assert [p.name for p in (tmp_path / "out0" / "checkpoints").iterdir()] == ["iter_00000002.pt"]
