"""Run under ``accelerate launch`` with 2 processes by tests/test_distributed.py.

Checks that gathered losses equal the single-process loss on the concatenated batch (value and
gradient), then trains a few real steps through the project's trainer.
"""

import json
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

from simwnw_hf.ssl.distributed import gather_no_grad, rank, world_size
from simwnw_hf.ssl.losses import NTXentLoss, VICRegLoss


def check_loss(loss_cls, n=4, d=8):
    torch.manual_seed(123)  # same full batch on every rank
    z0_full, z1_full = torch.randn(2 * n, d, requires_grad=True), torch.randn(2 * n, d, requires_grad=True)
    reference = loss_cls(gather_distributed=False)(z0_full, z1_full)
    reference.backward()
    r = rank()
    z0 = z0_full.detach()[r * n:(r + 1) * n].clone().requires_grad_(True)
    z1 = z1_full.detach()[r * n:(r + 1) * n].clone().requires_grad_(True)
    local = loss_cls()(z0, z1)
    local.backward()
    mean_loss = local.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world_size()
    # DDP averages gradients over processes: the local gradient / world size is d(global loss)/d(z_local)
    grad_ok = torch.allclose(z0.grad / world_size(), z0_full.grad[r * n:(r + 1) * n], atol=1e-6) and \
        torch.allclose(z1.grad / world_size(), z1_full.grad[r * n:(r + 1) * n], atol=1e-6)
    return abs(mean_loss.item() - reference.item()) < 1e-5, grad_ok


def main(out_path, data):
    state = Accelerator()  # the same singleton state the trainer's Accelerator() will find
    assert world_size() == 2, world_size()
    result = {"world_size": world_size()}
    result["ntxent_value"], result["ntxent_grad"] = check_loss(lambda **kw: NTXentLoss(0.5, **kw))
    result["vicreg_value"], result["vicreg_grad"] = check_loss(VICRegLoss)
    keys = torch.full((2, 3), float(rank()))
    result["moco_keys_gathered"] = gather_no_grad(keys)[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]

    from simwnw_hf.train.config import TrainConfig
    from simwnw_hf.train.trainer import train
    summary = train(TrainConfig(framework="moco", dataset=data, image_size=16, batch_size=4, max_steps=3,
                                model_args='{"channels": [8, 16, 16, 16]}', framework_args='{"hidden_dim": 32}',
                                output_dir=out_path + ".run", knn_eval=False, log_every=1))
    result["summary_processes"] = summary["num_processes"]
    result["checksums"] = summary["replica_checksums"]
    if state.is_main_process:
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
