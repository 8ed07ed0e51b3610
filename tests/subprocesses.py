"""Starting the project's entry points as real processes from the tests."""
import os
import socket

# Set in this pytest process by in-process tests that join a process group (init_distributed):
# a child must start its own group, not inherit these.
DIST_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE"}


def child_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(ranks: int):
    """DeepSpeed's launcher on a port of its own: two jobs on the default port join each other."""
    return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())]
