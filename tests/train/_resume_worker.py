"""Subprocess body for the exact-resume test: trains the digits MLP, optionally SIGKILLs itself at a
given micro-batch (a forward pre-hook, so the kill can land mid-epoch or mid-accumulation), and saves
the final weights.

    python _resume_worker.py CKPT_DIR OUT MAX_STEPS GRAD_ACCUM KILL_AT_MICRO RESUME(0|1)
"""

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

import fasttrain
from fasttrain.examples.digits import digits_mlp, load_digits_tensors

ckpt_dir, out, max_steps, grad_accum, kill_at, resume = sys.argv[1:]
max_steps, grad_accum, kill_at, resume = int(max_steps), int(grad_accum), int(kill_at), bool(int(resume))

torch.manual_seed(0)
model = nn.Sequential(nn.Dropout(0.1), digits_mlp(64))  # dropout: the torch RNG state must resume too
calls = 0


def maybe_die(module, args):
    # Dies at micro-batch kill_at, or a whole number of optimizer steps later (the same position within
    # the accumulation) if no checkpoint has landed yet: the writes are asynchronous, and on a loaded
    # machine the first fsync + rename can still be pending at kill_at, leaving nothing to resume from.
    global calls
    calls += 1
    if 0 < kill_at <= calls and (calls - kill_at) % grad_accum == 0 and any(Path(ckpt_dir).glob("step-*.ckpt")):
        os.kill(os.getpid(), signal.SIGKILL)


model.register_forward_pre_hook(maybe_die)
train, _ = load_digits_tensors()
trainer = fasttrain.Trainer(
    model,
    optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    loss_fn=nn.functional.cross_entropy,
    max_steps=max_steps,
    grad_accum=grad_accum,
    lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.9),
    checkpoint_dir=ckpt_dir,
    checkpoint_every=1,
    log_every=5,
    loggers=None,
    verbose=False,
)
trainer.fit(train, resume="last" if resume else None)
torch.save(model.state_dict(), out)
