"""fasttrain.optim.AdamW against torch.optim.AdamW(foreach=False): 100 steps with random grads on
every ISA path, amsgrad / maximize / weight decay / param groups, LR schedulers, state dicts both
ways, swapped gradients and parameters, real backward passes into the flat buffers, bad input."""

import io

import pytest
import torch

import fasttrain.optim
from fasttrain.ops import adamw_step_  # noqa: F401  (the op every step below runs)

SHAPES = [(1,), (7,), (4099,), (33, 65), (5, 3, 2)]  # odd sizes: none a multiple of 8 or 16 lanes


def make_params(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def clone_params(ps):
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def set_grads(groups, step, scale=1e-2):
    """Identical random grads for each list of params in `groups`."""
    g = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=g) * scale for p in groups[0]]
    for ps in groups:
        for p, gr in zip(ps, grads):
            if p.grad is None:
                p.grad = gr.clone()
            else:
                p.grad.copy_(gr)


def assert_params_close(a, b, rtol=1e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=1e-7)


CONFIGS = [
    dict(),
    dict(weight_decay=0.1, amsgrad=True),
    dict(weight_decay=0.0, maximize=True, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=1e-2, amsgrad=True, maximize=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
def test_100_steps_match_torch_foreach_false(isa, cfg):
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = fasttrain.optim.AdamW(ours_p, **cfg)
    ref = torch.optim.AdamW(ref_p, foreach=False, **cfg)
    for step in range(100):
        set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    assert_params_close(ours_p, ref_p)
    for p, q in zip(ours_p, ref_p):
        for k, v in ref.state[q].items():
            torch.testing.assert_close(ours.state[p][k], v, rtol=1e-6, atol=1e-9)


def test_param_groups_and_lr_scheduler(isa):
    ours_p, ref_p = make_params(), None
    ref_p = clone_params(ours_p)

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.0}, {"params": ps[2:], "amsgrad": True}]

    ours = fasttrain.optim.AdamW(groups(ours_p), lr=3e-3)
    ref = torch.optim.AdamW(groups(ref_p), lr=3e-3, foreach=False)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[1e-2, 3e-3], total_steps=60) for o in (ours, ref)]
    for step in range(60):
        set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
        for s in scheds:
            s.step()
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups]
    assert_params_close(ours_p, ref_p)


def test_tensor_lr():
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = fasttrain.optim.AdamW(ours_p, lr=torch.tensor(2e-3))
    ref = torch.optim.AdamW(ref_p, lr=torch.tensor(2e-3), foreach=False)
    for step in range(5):
        set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    assert_params_close(ours_p, ref_p)


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu")


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_save_load_continue_identical(amsgrad):
    a_p = make_params()
    a = fasttrain.optim.AdamW(a_p, lr=1e-2, amsgrad=amsgrad)
    for step in range(10):
        set_grads([a_p], step)
        a.step()
    sd = roundtrip(a.state_dict())
    b_p = clone_params(a_p)
    b = fasttrain.optim.AdamW(b_p, lr=1e-2, amsgrad=amsgrad)
    b.load_state_dict(sd)
    for step in range(10, 20):
        set_grads([a_p, b_p], step)
        a.step()
        b.step()
    for p, q in zip(a_p, b_p):
        assert torch.equal(p, q)
        for k in a.state[p]:
            assert torch.equal(a.state[p][k], b.state[q][k]), k


def test_torch_state_dict_loads_into_ours_and_back():
    t_p = make_params()
    t = torch.optim.AdamW(t_p, lr=1e-2, foreach=False)
    for step in range(10):
        set_grads([t_p], step)
        t.step()
    # torch -> fasttrain
    f_p = clone_params(t_p)
    f = fasttrain.optim.AdamW(f_p, lr=1e-2)
    f.load_state_dict(roundtrip(t.state_dict()))
    # fasttrain -> torch (a fresh torch optimizer)
    t2_p = clone_params(t_p)
    t2 = torch.optim.AdamW(t2_p, lr=1e-2, foreach=False)
    t2.load_state_dict(roundtrip(f.state_dict()))
    for step in range(10, 30):
        set_grads([t_p, f_p, t2_p], step)
        t.step()
        f.step()
        t2.step()
    assert_params_close(f_p, t_p)
    for p, q in zip(t2_p, t_p):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_params_become_views_of_one_flat_buffer():
    ps = make_params()
    before = [p.detach().clone() for p in ps]
    opt = fasttrain.optim.AdamW(ps)
    fg = opt._flat[0]
    base = fg.param_buf.untyped_storage().data_ptr()
    for p, b in zip(ps, before):
        assert p.untyped_storage().data_ptr() == base
        assert p.grad.untyped_storage().data_ptr() == fg.grad_buf.untyped_storage().data_ptr()
        assert torch.equal(p.detach(), b)


def test_backward_accumulates_into_flat_grads_and_matches_torch(isa):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    ref_model.load_state_dict(model.state_dict())
    opt = fasttrain.optim.AdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, foreach=False)
    ptrs = [p.grad.data_ptr() for p in model.parameters()]
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    for _ in range(20):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad(set_to_none=False)
            for half in (x[:32], x[32:]):  # two backwards: accumulation into the flat views
                torch.nn.functional.mse_loss(m(half), y[: len(half)]).backward()
            o.step()
    assert [p.grad.data_ptr() for p in model.parameters()] == ptrs  # autograd wrote into the views
    assert_params_close(list(model.parameters()), list(ref_model.parameters()), rtol=1e-5)


def test_set_to_none_reads_autograd_grads_in_place(isa, monkeypatch):
    """zero_grad() (set_to_none=True) drops the grads as torch does and frees the flat gradient buffer;
    the next backward's own tensors (two backwards: accumulated by autograd) are read in place by one
    multi-tensor call per group, never copied into a flat buffer (none is allocated again); results match
    torch, and set_to_none=False brings the zeroed buffer and its views back."""
    import fasttrain.optim.adamw as adamw_mod

    calls = []
    orig = adamw_mod._call_adamw_multi
    monkeypatch.setattr(adamw_mod, "_call_adamw_multi", lambda *a, **k: (calls.append(len(a[0])), orig(*a, **k)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    ref_model.load_state_dict(model.state_dict())
    opt = fasttrain.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, foreach=False, amsgrad=True)
    flat = opt._flat[0]
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    for _ in range(20):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            if o is opt:
                assert all(p.grad is None for p in model.parameters()) and not flat.has_grad_buf
            for half in (x[:32], x[32:]):
                torch.nn.functional.mse_loss(m(half), y[: len(half)]).backward()
            o.step()
    assert calls == [4] * 20
    assert not flat.has_grad_buf  # the step never needed it: the grads stayed autograd's
    assert_params_close(list(model.parameters()), list(ref_model.parameters()), rtol=1e-5)
    opt.zero_grad(set_to_none=False)
    assert flat.has_grad_buf and [p.grad.data_ptr() for p in model.parameters()] == flat.gptrs
    assert not flat.grad_buf.any()


def test_released_grad_buffer_comes_back_when_the_step_needs_it():
    """Switching a group to a configuration that reads the flat buffer (here max_grad_norm, set so high it
    never clips) after the buffer was released: the next step allocates it again, adopts autograd's grads
    and the run still matches torch."""
    torch.manual_seed(0)
    ours_p, ref_p = make_params(), make_params()
    ours = fasttrain.optim.AdamW(ours_p, lr=1e-2)
    ref = torch.optim.AdamW(ref_p, lr=1e-2, foreach=False)
    for step in range(6):
        if step == 3:
            ours.max_grad_norm = 1e30
        ours.zero_grad()
        ref.zero_grad()
        assert ours._flat[0].has_grad_buf == (step >= 3)  # zero_grad() in flat mode brings it back
        set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    assert [p.grad.data_ptr() for p in ours_p] == ours._flat[0].gptrs
    assert_params_close(ours_p, ref_p)


def test_set_to_none_skips_params_without_grad_like_torch():
    torch.manual_seed(0)
    ours_p, ref_p = make_params(), make_params()
    ours = fasttrain.optim.AdamW(ours_p, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(ref_p, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(4):
        ours.zero_grad()
        ref.zero_grad()
        set_grads([ours_p, ref_p], step)
        if step == 2:  # no gradient for parameter 1 this step: torch leaves it (and its step count) alone
            ours_p[1].grad = ref_p[1].grad = None
        ours.step()
        ref.step()
    assert ours.state[ours_p[1]]["step"].item() == ref.state[ref_p[1]]["step"].item() == 3
    assert_params_close(ours_p, ref_p)


@pytest.mark.parametrize("case", ["read_in_place", "flat_group", "non_contiguous"])
def test_swapped_grad_is_adopted_or_read_in_place(case):
    """A user-set fp32 contiguous grad is read where it is (fp32 AdamW); one the kernel cannot read
    (non-contiguous), or any swapped grad of a group whose step reads the flat buffer (here
    max_grad_norm, set so high it never clips), is copied into the flat slot and re-pointed."""
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = fasttrain.optim.AdamW(ours_p, max_grad_norm=1e30 if case == "flat_group" else None)
    ref = torch.optim.AdamW(ref_p, foreach=False)
    ptr = ours_p[2].grad.data_ptr()
    for step in range(3):
        set_grads([ours_p, ref_p], step)
        g = ref_p[2].grad
        user = g.clone() if case != "non_contiguous" else torch.stack([g, g], -1)[..., 0]
        ours_p[2].grad = user
        ours.step()
        ref.step()
    assert (ours_p[2].grad is user) == (case == "read_in_place")
    assert (ours_p[2].grad.data_ptr() == ptr) == (case != "read_in_place")
    assert_params_close(ours_p, ref_p)


def test_swapped_param_data_is_adopted():
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = fasttrain.optim.AdamW(ours_p)
    ref = torch.optim.AdamW(ref_p, foreach=False)
    new = torch.randn(ours_p[3].shape)
    ours_p[3].data = new.clone()
    ref_p[3].data = new.clone()
    set_grads([ours_p, ref_p], 0)
    ours.step()
    ref.step()
    assert ours_p[3].data_ptr() == ours._flat[0].pptrs[3]
    assert_params_close(ours_p, ref_p)
    ours_p[3].data = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="build a new optimizer"):
        ours.step()


def test_none_grad_skips_param_like_torch(isa):
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = fasttrain.optim.AdamW(ours_p, lr=1e-2)
    ref = torch.optim.AdamW(ref_p, lr=1e-2, foreach=False)
    for step in range(6):
        set_grads([ours_p, ref_p], step)
        if step in (1, 2):
            ours_p[1].grad = None
            ref_p[1].grad = None
        ours.step()
        ref.step()
        if step == 2:
            ours.zero_grad()  # re-attaches the flat view for the next step
    assert ours.state[ours_p[1]]["step"].item() == ref.state[ref_p[1]]["step"].item() == 4
    assert_params_close(ours_p, ref_p)


@pytest.mark.parametrize("kw", [dict(max_grad_norm=1.0), dict(state_dtype="bf16"), dict(state_dtype="int8")])
def test_zero_grad_keeps_views_where_the_step_reads_the_flat_buffer(kw):
    ps = make_params()
    opt = fasttrain.optim.AdamW(ps, **kw)
    set_grads([ps], 0)
    ptrs = [p.grad.data_ptr() for p in ps]
    opt.zero_grad()  # set_to_none=True, but these steps read the flat buffer: zeroed in place
    assert [p.grad.data_ptr() for p in ps] == ptrs
    assert all(not p.grad.any() for p in ps)


# --- constructor and bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
        (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
        (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
        (dict(weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
    ],
)
def test_constructor_errors_match_torch(kw, match):
    with pytest.raises(ValueError, match=match):
        torch.optim.AdamW(make_params(), **kw)
    with pytest.raises(ValueError, match=match):
        fasttrain.optim.AdamW(make_params(), **kw)


def test_bad_params():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="appears twice"):
        fasttrain.optim.AdamW([p, p])
    with pytest.raises(ValueError, match="more than one"):
        fasttrain.optim.AdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="complex"):
        fasttrain.optim.AdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="different devices"):
        fasttrain.optim.AdamW([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="on meta; AdamW supports CPU and CUDA parameters"):
        fasttrain.optim.AdamW([torch.nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="requires_grad"):
        fasttrain.optim.AdamW([torch.nn.Parameter(torch.zeros(3), requires_grad=False)])
    with pytest.raises(ValueError, match="capturable"):
        fasttrain.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], capturable=True)


def test_sparse_grad_raises():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = fasttrain.optim.AdamW([p])
    p.grad = torch.zeros(4, 3).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()


def test_negative_lr_set_later_raises():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = fasttrain.optim.AdamW([p])
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
