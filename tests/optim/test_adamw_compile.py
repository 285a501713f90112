"""torch.compile of a training step that calls fasttrain.optim.AdamW.step(): same results as eager,
and no more graph breaks than the same step with torch.optim.AdamW(fused=True)."""

import pytest
import torch

import fasttrain.optim

# Both warnings come from torch itself while dynamo traces the step, whatever the optimizer: building
# a variable for the returned `loss` (a non-leaf) reads its .grad, and torch.optim's fused path
# touches torch.jit.script_method.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def make(opt_cls, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    return model, opt_cls(model.parameters(), lr=1e-2, **kw)


def train_step(model, opt, x):
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def graph_breaks(opt_cls, **kw):
    model, opt = make(opt_cls, **kw)
    torch._dynamo.reset()
    return torch._dynamo.explain(lambda x: train_step(model, opt, x))(torch.randn(8, 16)).graph_break_count


def test_no_more_graph_breaks_than_torch_fused():
    assert graph_breaks(fasttrain.optim.AdamW) <= graph_breaks(torch.optim.AdamW, fused=True)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_matches_eager(backend):
    eager_model, eager_opt = make(fasttrain.optim.AdamW)
    model, opt = make(fasttrain.optim.AdamW)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: train_step(model, opt, x), backend=backend)
    for i in range(4):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(compiled(x), train_step(eager_model, eager_opt, x))
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opt.state[next(model.parameters())]["step"].item() == 4
