"""Two CPU processes (gloo) run the DG-Net loop: disjoint identities, identical weights, rank 0 writes.

What makes "identical weights" a proof rather than a coincidence: the ranks start from the same
(broadcast) weights, see different people, the weights move, and a control run of the same two
ranks with the gradient/buffer averaging switched off ends with different weights.
"""

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
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile
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


def _state(model: DGNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, data: str, teacher: str, base: str) -> None:
    """One rank: join the group, train 2 iterations, save what it saw and its first and final weights;
    then the control: the same run with the averaging over ranks switched off."""
    import os

    import dgnet.training.trainer as trainer_module
    from dgnet.training.trainer import DGNetTrainConfig, train_dgnet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    seen: list[tuple[int, list[int]]] = []
    models: list[DGNet] = []
    events: list[str] = []
    initial: list[dict[str, torch.Tensor]] = []

    class RecordingSampler(IdentityPairSampler):
        def __init__(self, labels, *args, **kwargs):
            super().__init__(labels, *args, **kwargs)
            self.all_labels = np.asarray(labels)

        def batch(self, iteration):
            if iteration == 0:  # drawn before the first step, after the broadcast from rank 0
                initial.append(_state(models[-1]))
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
            sampling="identity",  # disjoint identities across ranks, checked below
        )  # fmt: skip
        frame = build_manifest(data)
        train_dgnet(frame, get_profile("tiny"), cfg, [teacher], Path(base) / f"out{rank}", hooks=[Events()])
        record = {"seen": seen, "initial": initial[0], "state": _state(models[0]), "events": events}
        # The control: each rank keeps its own gradients and BN statistics.
        trainer_module.average_gradients = lambda parameters, ctx: None
        trainer_module.average_buffers = lambda module, ctx: None
        train_dgnet(frame, get_profile("tiny"), cfg, [teacher], Path(base) / f"local{rank}")
        record["local_state"] = _state(models[1])
        torch.save(record, Path(base) / f"rank{rank}.pt")
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

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # Disjoint identities: each iteration, each rank has a full batch (streams a and b of BATCH people,
    # each with a positive) and the two ranks' batches share no person.
    seen = [r["seen"][: len(r["seen"]) // 2] for r in ranks]  # the first (averaged) run's batches
    assert [it for it, _ in seen[0]] == [it for it, _ in seen[1]] == [0, 1]
    for (_, ids0), (_, ids1) in zip(*seen, strict=True):
        assert len(ids0) == len(ids1) == 4 * BATCH
        assert len(set(ids0)) == len(set(ids1)) == 2 * BATCH
        assert not set(ids0) & set(ids1), f"ranks share identities {set(ids0) & set(ids1)}"
    # Same start (rank 0's weights), then the weights move.
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys() == ranks[0]["initial"].keys()
    assert all(torch.equal(ranks[0]["initial"][k], ranks[1]["initial"][k]) for k in first)
    moved = [k for k in first if not torch.equal(first[k], ranks[0]["initial"][k])]
    assert len(moved) > len(first) // 2, "training did not change the weights: nothing is proven"
    # Identical weights and BN statistics on both ranks after the run.
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"ranks disagree on {different[:5]}"
    # The control without averaging: the ranks' different batches do pull the weights apart.
    local0, local1 = ranks[0]["local_state"], ranks[1]["local_state"]
    assert sum(not torch.equal(local0[k], local1[k]) for k in local0) > len(local0) // 2
    # Only rank 0 calls hooks and writes.
    assert ranks[0]["events"] == ["start", "iteration", "iteration", "checkpoint", "end"]
    assert ranks[1]["events"] == []
    assert not (tmp_path / "out1").exists()
    assert (tmp_path / "out0" / "model.pt").is_file()
    assert [p.name for p in (tmp_path / "out0" / "checkpoints").iterdir()] == ["iter_00000002.pt"]
