"""DDP over 2 CPU ranks where one rank's batch has an image and the other's is text-only (stage 2's 90/10
mix does this): the backward must not hang or mismatch collectives, and the averaged gradients must equal
the mean of the two ranks' single-process gradients (the text-only rank contributes zero to vision)."""
import os
import socket

import torch
import torch.multiprocessing as mp

from nanoocr.model import presets
from nanoocr.model.vlm import NanoOCR


def model(seed=0):
    torch.manual_seed(seed)
    return NanoOCR(presets.build_config("nano", sam={"depth": 2}, gpt={"vocab_size": 300, "n_layer": 2},
                                        image_token_id=299)).train()


def batch(rank):
    g = torch.Generator().manual_seed(rank)
    if rank == 0:  # one tiny-mode image: 73 vision tokens
        ids = torch.cat([torch.full((1, 73), 299), torch.randint(0, 298, (1, 6), generator=g)], 1)
        return ids, torch.randint(0, 298, (1, 79), generator=g), torch.randn(1, 3, 512, 512, generator=g)
    ids = torch.randint(0, 298, (1, 12), generator=g)
    return ids, torch.randint(0, 298, (1, 12), generator=g), None


def _worker(rank, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ddp = DDP(model())
        ids, targets, images = batch(rank)
        ddp(ids, targets, images).backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in ddp.module.named_parameters()}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_rank_without_images(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, tmp_path / "grads.pt"), nprocs=2)
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    single = []
    for rank in (0, 1):
        m = model()
        m(*batch(rank)).backward()
        single.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in ddp_grads.items():
        want = (single[0][name] + single[1][name]) / 2
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6, msg=name)
    assert single[1]["sam.patch_embed.proj.weight"].abs().sum() == 0  # text-only: a zero, not a None
