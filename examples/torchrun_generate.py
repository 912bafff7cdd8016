"""Generate across processes launched by ``torchrun``: rank 0 is the driver, rank i + 1 serves stage i of the plan.

    export ROTAFX_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))")   # every rank reads it
    torchrun --nproc-per-node 4 examples/torchrun_generate.py PLAN_DIR [--new-tokens 16]

``PLAN_DIR`` is a plan with generation programs and three stages (``rotafx.export(model, (ids,), path=PLAN_DIR,
max_context=64)``; ``--nproc-per-node`` is its stages + 1). torchrun sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; its agent hosts its own store on ``MASTER_PORT``, so the driver listens on the
next port (``ROTAFX_PORT`` overrides). Rank 0 prints the tokens of a prompt and stops the stages.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=100, help="prompt token ids are drawn below this")
    args = ap.parse_args()
    if os.environ.get("RANK", "0") != "0":  # a stage: its index from $RANK, the driver's address from the environment
        from rotafx.runtime.distributed.stage import main as serve

        code = serve(["--plan", args.plan, "--threads", "1"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # as python -m rotafx.runtime.distributed does: no teardown race with gloo's threads
    from rotafx.plan.schema import PlanError
    from rotafx.runtime.distributed import DistributedError, Driver
    from rotafx.runtime.distributed.secret import SecretError
    from rotafx.runtime.sampling import GenerationError

    torch.set_num_threads(1)
    try:
        with Driver(args.plan) as driver:
            prompt = torch.randint(0, args.vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
            ids = driver.generate(prompt, max_new_tokens=args.new_tokens)
    except (DistributedError, SecretError, PlanError, GenerationError, ValueError) as e:
        print(e)
        return 2
    print("tokens:", ids[0].tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
