"""One rank of the all-reduce benchmark in Python's torch.distributed (Gloo): the reference that
dist/benches/allreduce.rs compares the binding against. torchrun's variables give the rendezvous;
argv: SIZE:ITERATIONS pairs (bytes of an f32 tensor, timed calls). Rank 0 prints `SIZE SECONDS_PER_CALL`."""
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main():
    torch.set_num_threads(1)
    runs = [tuple(int(x) for x in a.split(":")) for a in sys.argv[1:]]
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    for size, n in runs:
        t = torch.ones(size // 4, dtype=torch.float32)
        for _ in range(3):
            dist.all_reduce(t)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(n):
            dist.all_reduce(t)
        elapsed = (time.perf_counter() - start) / n
        if rank == 0:
            print(f"{size} {elapsed}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
