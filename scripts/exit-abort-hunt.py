"""How often does a finished DDP worker abort in the interpreter's teardown? (issue 34, docs/distributed.md)

Starts two gloo ranks N times; each wraps a small model in DistributedDataParallel, takes one step, destroys the
process group and then leaves either as usual (``teardown``) or by ``os._exit`` (``os_exit``, what convae's
workers do). Prints each abnormal exit and the exit codes counted over all workers. Plain torch: the abort is
torch's (pytorch/pytorch#190489), not convae's.

    python scripts/exit-abort-hunt.py 150 teardown     # about 10 minutes on 2 cores
    python scripts/exit-abort-hunt.py 150 os_exit
"""
import collections
import os
import random
import subprocess
import sys

WORKER = r"""
import os, sys, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
model(torch.rand(1, 1, 32, 32))
ddp = torch.nn.parallel.DistributedDataParallel(model)
ddp(torch.rand(16, 1, 32, 32)).square().mean().backward()
dist.destroy_process_group()
if sys.argv[1] == "os_exit":
    sys.stdout.flush()
    os._exit(0)
"""


def main(runs: int, mode: str) -> None:
    codes = collections.Counter()
    for run in range(runs):
        port = random.randrange(20000, 32000)
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, mode], stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                             MASTER_PORT=str(port), OMP_NUM_THREADS="1"))
                   for rank in range(2)]
        for worker in workers:
            err = worker.communicate()[1]
            codes[worker.returncode] += 1
            if worker.returncode != 0:
                print(f"run {run}: exit {worker.returncode}: {err.strip().splitlines()[-1:]}", flush=True)
    print(f"{mode}: exit codes of {2 * runs} workers: {dict(codes)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
