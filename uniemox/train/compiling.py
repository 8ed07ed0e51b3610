"""``train.compile``: torch.compile of the module the engine trains, through DeepSpeed's own
``engine.compile``. It compiles ``engine.module`` in place, with the accelerator's backend
(inductor, on CUDA and on the CPU), so parameter names, checkpoints, the optimizer and ZeRO's
hooks see the same module as in an eager run, and a checkpoint resumes either way.

What is compiled is the task's student: the pretraining module (encoder, decoder, fusion and
losses; each fused Triton kernel is a torch.library custom op, one opaque node of the graph,
so the kernels break no graph) or the classifier. The frozen CLIP teacher runs eagerly before
it, in inference mode (``UniEmoXPretrainer.distillation_targets``). docs/compile.md says what
was measured and how each ZeRO stage behaves.
"""
import logging

from uniemox.errors import UserError

logger = logging.getLogger(__name__)


def compile_engine(engine, mode: str, task=None) -> None:
    """Compile ``engine.module`` with torch.compile's ``mode`` (config.sections.COMPILE_MODES);
    the first step traces and compiles it. ``task``: refused unless its ``compilable`` says
    that its module's forward takes tensors only (the teacher trainer's takes prompt strings)."""
    if task is not None and not getattr(task, "compilable", False):
        raise UserError(f"train.compile: the {task.name} task has no compiled path (pretraining and "
                        f"classification have); set train.compile=false")
    if engine.zero_optimization_partition_weights() and not engine.is_deepcompile_enabled():
        # measured: dynamo traces ZeRO-3's partitioned parameters as the empty tensors they are
        raise UserError("train.compile with ZeRO-3 needs DeepSpeed's DeepCompile (\"compile\": {\"deepcompile\": "
                        "true} in the DeepSpeed JSON; CUDA only); ZeRO-0/1/2 compile as they are")
    engine.compile(compile_kwargs={} if mode == "default" else {"mode": mode})
    logger.info("torch.compile: %s, mode %s (the first step compiles)", type(engine.module).__name__, mode)
