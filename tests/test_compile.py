"""torch.compile of the student (``train.compile``) on the CPU.

* Each fused Triton kernel is a torch.library custom op: torch's own ``opcheck`` passes (schema,
  fake tensors, autograd registration, AOT dispatch with dynamic shapes), under the Triton
  interpreter.
* ``torch._dynamo.explain`` over the student's forward and losses: one graph, no graph break,
  the four kernel ops in it (Triton kernels) or none of them (the PyTorch references).
* The compiled autograd graphs (AOTAutograd, no code generation) give the eager losses and
  gradients, and their backward runs the kernels' backward ops.
* The trainer with ``train.compile=true`` (DeepSpeed's engine.compile, inductor, the Triton
  kernels under the interpreter) gives the eager run's losses and weights. Inductor compiles for
  one to two minutes on a 2-core CPU (warm cache: seconds), so this is the one inductor case.
"""
import json
import os

import pytest
import torch

from uniemox.kernels import distillation_triton, masking_triton, reconstruction_triton  # noqa: F401 (the ops)
from uniemox.models import create_pretrainer
from uniemox.exports.teacher import load_teacher

ARCH = dict(img_size=32, depth=2, decoder_depth=1)
FORWARD_OPS = {"uniemox.random_masking.default", "uniemox.unmask_tokens.default",
               "uniemox.masked_reconstruction_loss.default", "uniemox.distillation_losses.default"}
# the distillation kernel writes the student's gradient in its forward: its backward is a scaling
BACKWARD_OPS = {"uniemox.random_masking_backward.default", "uniemox.unmask_tokens_backward.default",
                "uniemox.masked_reconstruction_loss_backward.default"}


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("uniemox-clip-tiny", pretrained="none")


def _student(teacher, impl):
    torch.manual_seed(0)
    model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=teacher.embed_dim, kernel_impl=impl,
                              attn_backend="sdpa", fusion="mlp_glu", **ARCH)
    model.attach_teacher(teacher)
    return model


def _batch(teacher, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    scene, person = torch.randn(2, 4, 3, 32, 32, generator=g)
    noise = torch.rand(2, 4, 4, generator=g)
    targets = model.distillation_targets(scene, ["a photo of awe", "fear", "a photo of awe", "joy"])
    return scene, person, noise, targets


def _loss(model):
    def step(scene, person, noise, targets):
        return model(scene, person, None, noise[0], noise[1], targets=targets)["loss"]
    return step


def _ops(graph_module):
    return {str(n.target) for n in graph_module.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("uniemox.")}


# -- the custom ops -------------------------------------------------------------------------------

def _op_cases():
    g = torch.Generator().manual_seed(0)
    x, pos = torch.randn(2, 8, 6, generator=g, requires_grad=True), torch.randn(8, 6, generator=g, requires_grad=True)
    noise = torch.rand(2, 8, generator=g)
    ids = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    imgs, pred = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 4, 768, generator=g, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    student, image, text = (torch.randn(n, 32, generator=g) for n in (4, 4, 5))
    ops = torch.ops.uniemox
    return [
        (ops.random_masking, (x, noise, 3, pos)),
        (ops.random_masking, (x, noise, 3, None)),
        (ops.random_masking_backward, (torch.randn(2, 3, 6, generator=g), ids)),
        (ops.unmask_tokens, (torch.randn(2, 3, 6, generator=g, requires_grad=True), torch.randn(6, requires_grad=True),
                             ids, pos)),
        (ops.unmask_tokens_backward, (torch.randn(2, 8, 6, generator=g), ids, 3, torch.bfloat16)),
        (ops.masked_reconstruction_loss, (imgs, pred, mask, 16, True)),
        (ops.masked_reconstruction_loss_backward, (imgs, pred.detach(), mask, torch.tensor(1.5), mask.sum(), 16, False)),
        (ops.distillation_losses, (student.requires_grad_(), image, text, True)),
        (ops.distillation_losses, (student.detach(), image, text, False)),
    ]


@pytest.mark.parametrize("case", range(len(_op_cases())))
def test_every_kernel_op_passes_torch_opcheck(case):
    op, args = _op_cases()[case]
    assert set(torch.library.opcheck(op, args).values()) == {"SUCCESS"}


# -- graph breaks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_the_student_step_is_one_graph_without_a_break(teacher, impl):
    model = _student(teacher, impl)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_loss(model))(*_batch(teacher, model))
    assert explained.break_reasons == [] and explained.graph_break_count == 0 and explained.graph_count == 1
    (graph,) = explained.graphs
    # Triton: each kernel is one opaque node; the references are traced op by op
    assert _ops(graph) == (FORWARD_OPS if impl == "triton" else set())


@pytest.mark.parametrize("probe", [False, True])
def test_the_classifier_is_one_graph_without_a_break(probe):
    """Fine-tuning's encoder with its head (drop-path on), and the linear probe (frozen encoder
    under no_grad, BatchNorm head)."""
    from uniemox.finetune.heads import LinearProbe
    from uniemox.models import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("uniemox_vit_tiny_patch16", num_classes=0 if probe else 6, drop_path_rate=0.1,
                             attn_backend="sdpa", img_size=32, depth=2)
    model = LinearProbe(encoder, 6) if probe else encoder
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(4, 3, 32, 32))
    assert explained.break_reasons == [] and explained.graph_break_count == 0 and explained.graph_count == 1


def test_a_graph_break_would_be_seen():
    """The explain check above can fail: a host read in the step breaks the graph."""
    def step(x):
        y = x * 2
        if y.sum().item() > 0:
            return y + 1
        return y - 1
    assert torch._dynamo.explain(step)(torch.ones(3)).graph_break_count == 1


# -- compiled autograd = eager ----------------------------------------------------------------------

def test_compiled_autograd_matches_eager_and_runs_the_kernels_backward(teacher):
    """Forward and backward graphs captured by AOTAutograd (as inductor gets them, without code
    generation): the same losses and gradients as eager, to fp32 rounding, over three optimizer
    steps; the backward graph calls the kernels' backward ops."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {"forward": set(), "backward": set()}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind] |= _ops(gm)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"))
    torch._dynamo.reset()
    results = {}
    for mode in ("eager", "compiled"):
        model = _student(teacher, "triton")
        step = torch.compile(_loss(model), backend=backend) if mode == "compiled" else _loss(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        results[mode] = []
        for i in range(3):
            loss = step(*_batch(teacher, model, seed=i))
            loss.backward()
            results[mode].append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                                  if p.grad is not None}))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert graphs == {"forward": FORWARD_OPS, "backward": BACKWARD_OPS}
    for (loss, grads), (ref_loss, ref_grads) in zip(results["compiled"], results["eager"]):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
        assert grads.keys() == ref_grads.keys() and "model.mask_token" in grads
        for name, grad in grads.items():
            scale = ref_grads[name].abs().max().item() or 1.0
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


# -- the trainer ------------------------------------------------------------------------------------

def _train(tmp_path, compiled):
    from uniemox.config import deepspeed_config, resolve_config
    from uniemox.config.pretrain import PretrainConfig
    from uniemox.tasks.pretrain import PretrainTask
    from uniemox.train.engine import fp32_module_state
    from uniemox.train.trainer import Trainer

    run_dir = tmp_path / ("compiled" if compiled else "eager")
    overrides = ["data.batch_size=4", "data.num_workers=0", "optim.max_steps=3", "log.every=1", "log.progress=false",
                 "log.image_every=0", "checkpoint.every=0", f"log.run_dir={run_dir}", "model.kernels=triton",
                 "model.arch={img_size: 32, depth: 2, decoder_depth: 1}", f"train.compile={str(compiled).lower()}"]
    cfg = resolve_config(PretrainConfig, overrides=overrides, recipes=PretrainTask.recipes)
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, PretrainTask, deepspeed_config("zero2"))  # one rank: ZeRO-0
        trainer.fit()
    finally:
        torch.set_num_threads(threads)  # the trainer sized them for its run
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss/loss"] for line in f if "loss/loss" in line]
    return trainer, losses, fp32_module_state(trainer.engine)


def test_trainer_compiled_run_matches_the_eager_run(tmp_path):
    """train.compile=true through DeepSpeed's engine.compile (inductor), Triton kernels under the
    interpreter: the same losses (rtol 1e-5) and, after three AdamW steps, the same weights
    (atol 1e-5: Adam's update is lr-sized whatever the gradient's size, so weights carry the
    gradients' direction, not their rounding); checkpoints keep the eager module's names."""
    eager, eager_losses, eager_state = _train(tmp_path, compiled=False)
    compiled, losses, state = _train(tmp_path, compiled=True)
    assert compiled.engine.is_compiled and not eager.engine.is_compiled
    assert len(losses) == len(eager_losses) == 3
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert state.keys() == eager_state.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, eager_state[name], rtol=0, atol=1e-5, msg=name)
    assert (tmp_path / "compiled" / "checkpoints" / "step_00000003" / "COMPLETE").is_file()


def test_refused_where_there_is_no_compiled_path():
    """The teacher trainer's module takes prompt strings; ZeRO-3 without DeepCompile traces its
    partitioned (empty) parameters (measured: two ranks fail in the first step)."""
    from uniemox.errors import UserError
    from uniemox.train.compiling import compile_engine

    class Task:
        name, compilable = "teacher", False

    class Zero3Engine:
        def zero_optimization_partition_weights(self):
            return True

        def is_deepcompile_enabled(self):
            return False

    with pytest.raises(UserError, match="the teacher task has no compiled path"):
        compile_engine(Zero3Engine(), "default", Task())
    Task.compilable = True
    with pytest.raises(UserError, match="ZeRO-3 needs DeepSpeed's DeepCompile"):
        compile_engine(Zero3Engine(), "default", Task())
