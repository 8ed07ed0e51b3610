"""Two nodes for real, through DeepSpeed's launcher (`--hostfile ... --no_ssh --node_rank N`, the way
a SLURM job starts it on each node): each "node" runs in a network namespace of its own, with its
own address on a virtual Ethernet pair (created here, removed after; plain loopback where the
kernel refuses namespaces). The run trains, checkpoints (one trainer state per rank), and a second
two-node run resumes it."""
import json
import os
import subprocess
import uuid

import pytest
from subprocesses import child_env, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=4", "data.num_workers=1",
        "log.every=1", "log.progress=false", "log.image_every=0", "checkpoint.every=2",
        "train.single_rank_stage0=false"]


def _sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def _namespaces(spaces, links, addresses):
    """Two namespaces joined by a veth pair, or None where the kernel refuses."""
    steps = [("ip", "netns", "add", spaces[0]), ("ip", "netns", "add", spaces[1]),
             ("ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1])]
    for space, link, address in zip(spaces, links, addresses):
        steps += [("ip", "link", "set", link, "netns", space),
                  ("ip", "-n", space, "addr", "add", f"{address}/24", "dev", link),
                  ("ip", "-n", space, "link", "set", link, "up"), ("ip", "-n", space, "link", "set", "lo", "up")]
    for step in steps:
        if _sh(*step).returncode:
            return None
    return [(["ip", "netns", "exec", space], address, link) for space, address, link in zip(spaces, addresses, links)]


@pytest.fixture()
def nodes(request):
    """[(command prefix, address, interface)] of node 0 and node 1."""
    tag = uuid.uuid4().hex[:6]
    spaces = [f"ux{tag}a", f"ux{tag}b"]
    try:
        made = _namespaces(spaces, [f"v{tag}a", f"v{tag}b"], ["10.231.7.1", "10.231.7.2"])
        request.node.user_properties.append(("network", "namespaces" if made else "loopback"))
        yield made or [([], "127.0.0.1", "lo"), ([], "127.0.0.1", "lo")]  # loopback where namespaces are refused
    finally:
        for space in spaces:  # removing a namespace removes its end of the pair, and so the pair
            _sh("ip", "netns", "del", space)


def run_two_nodes(nodes, tmp_path, run_dir, *args):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    master, port = nodes[0][1], free_port()
    procs = []
    for rank, (prefix, _, link) in enumerate(nodes):
        cmd = prefix + ["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                        "--master_addr", master, "--master_port", str(port),
                        os.path.join(REPO, "launch", "pretrain.py"), "--run-dir", str(run_dir)] + TINY + list(args)
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=child_env({"GLOO_SOCKET_IFNAME": link})))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def test_two_nodes_train_checkpoint_and_resume(nodes, tmp_path):
    run_dir = tmp_path / "run"
    first = run_two_nodes(nodes, tmp_path, run_dir, "optim.max_steps=2")
    if nodes[0][0]:  # in namespaces: the ranks met over the veth pair's addresses
        assert f"--master_addr={nodes[0][1]}" in first[0]
    assert "nnodes=2" in first[0] and "dist_world_size=2" in first[0]
    tag = run_dir / "checkpoints" / "step_00000002"
    assert json.loads((tag / "COMPLETE").read_text())["world_size"] == 2
    assert {p.name for p in tag.glob("trainer_rank*.pt")} == {"trainer_rank0.pt", "trainer_rank1.pt"}
    assert len(list(tag.glob("*optim_states.pt"))) == 2  # ZeRO-2: each rank its own partition
    second = run_two_nodes(nodes, tmp_path, run_dir, "optim.max_steps=4", "--resume", "auto")
    assert "resumed from" in "".join(second)
    steps = [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "step_00000004" / "COMPLETE").is_file()
