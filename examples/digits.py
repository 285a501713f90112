"""Train a digits classifier (sklearn's 8x8 digits: 1797 images, 10 classes) with fasttrain.Trainer.

    python examples/digits.py            # a few seconds on a CPU, >= 95% validation accuracy
"""

import torch
from torch import nn

import fasttrain
from fasttrain.examples.digits import digits_mlp, load_digits_tensors

torch.manual_seed(0)
train, val = load_digits_tensors()
trainer = fasttrain.Trainer(
    digits_mlp(),
    loss_fn=nn.functional.cross_entropy,
    max_epochs=20,
    batch_size=32,
    optimizer_kwargs={"lr": 1e-3},
    log_every=100,
    loggers=None,
)
trainer.fit(train, val_data=val)
print(trainer.validate(val))
