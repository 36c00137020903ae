"""The rest of crash's vocabulary (issue 15 item 2): kmem -i/-s, files, vm, sig,
mount, net, dev, irq, timer, foreach, search, log -T. Read with no vmlinux
(BTF, kallsyms) and compared with drgn reading the same dump with the -dbg
vmlinux, and with what the guest itself reported before the panic (the
manifest's `explore` section, schema 2: /proc/PID/fd, /proc/mounts, ip addr,
/proc/meminfo, date less /proc/uptime)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import drgn_program
from patching import patched_dump, word

import kvmcore
from kvmcore.commands import COMMANDS
from kvmcore.errors import KvmcoreError, WalkError

SID = "x86_64-kaslr"
COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


def run(dump, line: str) -> dict:
    words = line.split()
    cmd = COMMANDS[words[0]]
    data = cmd.data(dump, **cmd.parse(words[1:]))
    assert cmd.render(data)  # the text renders too
    json.dumps(data)  # and the data is JSON
    return data


@pytest.fixture(scope="module")
def pair(samples):
    s = samples.get_built(SID)
    return kvmcore.open(str(s.file("elf"))), drgn_program(
        str(s.file("elf")), str(samples.vmlinux(SID))
    )


@pytest.fixture(scope="module")
def truth(samples):
    """The guest's own report (manifest schema 2)."""
    m = samples.get_built(SID).manifest
    if "explore" not in m:
        pytest.fail(
            f"{SID}'s manifest (schema {m.get('schema')}) predates the exploration ground "
            "truth: rebuild it (python -m sample_dumps build --only x86_64-kaslr --with-dbg)",
            pytrace=False,
        )
    return m["explore"]


def _task(prog, pid):
    from drgn.helpers.linux.pid import find_task

    return find_task(prog, pid)


# -- kmem ------------------------------------------------------------------------------
def test_kmem_i_matches_drgn_and_meminfo(pair, truth):
    from drgn.helpers.linux.mm import totalram_pages
    from drgn.helpers.linux.vmstat import global_node_page_state, global_zone_page_state

    dump, prog = pair
    info = run(dump, "kmem -i")["info"]
    pages = info["pages"]
    assert pages["MemTotal"] == totalram_pages(prog)
    assert pages["MemFree"] == global_zone_page_state(prog, prog["NR_FREE_PAGES"])
    assert pages["Shmem"] == global_node_page_state(prog, prog["NR_SHMEM"])
    file_pages = global_node_page_state(prog, prog["NR_FILE_PAGES"])
    assert pages["Cached"] + pages["Buffers"] + pages["SwapCached"] == file_pages
    # /proc/meminfo at the marker; the crasher ran after it (a few MB at most)
    kb, meminfo = info["kb"], truth["meminfo_kb"]
    assert kb["MemTotal"] == meminfo["MemTotal"]
    assert abs(kb["MemFree"] - meminfo["MemFree"]) <= 4096
    assert abs(kb["Cached"] - meminfo["Cached"]) <= 2048
    assert abs(kb["Buffers"] - meminfo["Buffers"]) <= 1024


def test_kmem_s_matches_drgn(pair):
    from drgn.helpers.linux.slab import for_each_slab_cache, slab_cache_usage

    dump, prog = pair
    ours = {c["name"]: c for c in run(dump, "kmem -s")["slab_caches"]}
    theirs = {c.name.string_().decode(): c for c in for_each_slab_cache(prog)}
    assert set(ours) == set(theirs)
    for name, c in theirs.items():
        mine = ours[name]
        assert mine["cache"] == f"{c.value_():#x}"
        assert mine["object_size"] == c.object_size.value_()
        assert mine["size"] == c.size.value_()
        usage = slab_cache_usage(c)
        assert (mine["slabs"], mine["objects"]) == (usage.num_slabs, usage.num_objs), name
        # active as /proc/slabinfo counts it: the per-CPU slabs' free objects count as
        # active there, drgn counts them free
        assert usage.active_objs <= mine["active"] <= mine["objects"], name


# -- files, vm, sig ------------------------------------------------------------------------
def test_files_matches_proc_fd_and_drgn(pair, truth):
    from drgn.helpers.linux.fs import d_path, for_each_file

    dump, prog = pair
    pid = truth["fds"]["pid"]
    data = run(dump, f"files {pid}")
    assert data["comm"] == "nc"
    assert {str(f["fd"]): f["path"] for f in data["fds"]} == truth["fds"]["fds"]
    # nc sleeps in accept(), which reserved its fd (open_fds bit set, no file yet)
    theirs = {fd: f for fd, f in for_each_file(_task(prog, pid)) if f}
    assert [f["fd"] for f in data["fds"]] == sorted(theirs)
    for f in data["fds"]:
        file = theirs[f["fd"]]
        assert f["file"] == f"{file.value_():#x}"
        if f["type"] in ("REG", "CHR"):
            assert f["path"] == d_path(file.f_path).decode()
    types = {f["fd"]: f["type"] for f in data["fds"]}
    assert (types[0], types[3], types[5]) == ("FIFO", "REG", "FIFO")
    assert "SOCK" in types.values()


@pytest.mark.parametrize("which", ["init", "nc"])
def test_vm_matches_drgn(pair, truth, which):
    from drgn.helpers.linux.fs import d_path
    from drgn.helpers.linux.mm import for_each_vma

    dump, prog = pair
    pid = 1 if which == "init" else truth["fds"]["pid"]
    data = run(dump, f"vm {pid}")
    task = _task(prog, pid)
    theirs = [
        (
            v.vm_start.value_(),
            v.vm_end.value_(),
            v.vm_flags.value_(),
            d_path(v.vm_file.f_path).decode() if v.vm_file else None,
        )
        for v in for_each_vma(task.mm)
    ]
    assert [(v["start"], v["end"], v["flags"], v["file"]) for v in data["vmas"]] == theirs
    assert any(v["file"] == "/bin/busybox" for v in data["vmas"])
    # a kernel thread has none
    assert run(dump, "vm 2")["vmas"] == []


def test_sig_matches_drgn(pair, truth):
    dump, prog = pair
    pid = truth["fds"]["pid"]
    data = run(dump, f"sig {pid}")
    task = _task(prog, pid)
    assert data["blocked"] == task.blocked.sig[0].value_()
    assert data["pending"] == task.pending.signal.sig[0].value_()
    actions = task.sighand.action
    assert len(data["handlers"]) == len(actions)
    for h in data["handlers"]:
        assert h["handler"] == actions[h["signal"] - 1].sa.sa_handler.value_()
    # busybox's shell starts a background job with SIGINT and SIGQUIT ignored
    by_name = {h["name"]: h["disposition"] for h in data["handlers"]}
    assert by_name["SIGINT"] == by_name["SIGQUIT"] == "SIG_IGN"


# -- mount, net, dev ---------------------------------------------------------------------------
def test_mount_matches_proc_mounts_and_drgn(pair, truth):
    from drgn.helpers.linux.fs import for_each_mount, mount_dst, mount_fstype, mount_src

    dump, prog = pair
    ours = [(m["device"], m["dir"], m["type"]) for m in run(dump, "mount")["mounts"]]
    theirs = [
        (mount_src(m).decode(), mount_dst(m).decode(), mount_fstype(m).decode())
        for m in for_each_mount(prog)
    ]
    assert ours == theirs
    assert ours == [(m["device"], m["dir"], m["type"]) for m in truth["mounts"]]


def test_net_matches_ip_addr_and_drgn(pair, truth):
    from drgn.helpers.linux.net import for_each_netdev, netdev_ipv4_addrs

    dump, prog = pair
    devices = run(dump, "net")["devices"]
    theirs = list(for_each_netdev(prog))  # init_net
    assert [d["name"] for d in devices] == [d.name.string_().decode() for d in theirs]
    for d, dev in zip(devices, theirs):
        assert [a["address"] for a in d["addresses"]] == [str(a) for a in netdev_ipv4_addrs(dev)]
        assert d["flags"] == dev.flags.value_()
    assert {d["name"] for d in devices} == set(truth["netdevs"])
    for d in devices:
        guest = truth["netdevs"][d["name"]]
        assert (d["flags"], d["mtu"], d["hwaddr"]) == (guest["flags"], guest["mtu"], guest["mac"])
        assert [f"{a['address']}/{a['prefixlen']}" for a in d["addresses"]] == [
            a["addr"] for a in guest["addrs"]
        ]


def test_dev_matches_drgn(pair):
    dump, prog = pair
    data = run(dump, "dev")
    theirs = []
    for head in prog["chrdevs"]:
        cd = head
        while cd:
            theirs.append((cd.major.value_(), cd.baseminor.value_(), cd.name.string_().decode()))
            cd = cd.next
    assert [(d["major"], d["baseminor"], d["name"]) for d in data["character"]] == sorted(theirs)
    majors = {d["major"]: d["name"] for d in data["character"]}
    assert majors[1] == "mem" and majors[10] == "misc"
    block = []
    for head in prog["major_names"]:
        b = head
        while b:
            block.append((b.major.value_(), b.name.string_().decode()))
            b = b.next
    assert [(d["major"], d["name"]) for d in data["block"]] == sorted(block)


# -- irq, timer -------------------------------------------------------------------------------
def test_irq_matches_drgn(pair):
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.irq import (
        for_each_irq_desc,
        irq_desc_action_names,
        irq_desc_chip_name,
        irq_desc_kstat_cpu,
    )

    dump, prog = pair
    ours = {i["irq"]: i for i in run(dump, "irq")["irqs"]}
    theirs = dict(for_each_irq_desc(prog))
    assert set(ours) == set(theirs)
    cpus = list(for_each_possible_cpu(prog))
    for irq, desc in theirs.items():
        mine = ours[irq]
        assert mine["desc"] == f"{desc.value_():#x}"
        assert [a["name"] for a in mine["actions"]] == [
            n.decode() for n in irq_desc_action_names(desc)
        ]
        chip = irq_desc_chip_name(desc)
        assert mine["chip"] == (chip.decode() if chip is not None else None)
        assert mine["count"] == sum(irq_desc_kstat_cpu(desc, c) for c in cpus)
    assert "serial8250_interrupt" in {a["handler"] for i in ours.values() for a in i["actions"]}
    assert run(dump, "irq 4")["irqs"][0]["irq"] == 4


def test_timer_matches_drgn(pair):
    from drgn.helpers.linux.percpu import per_cpu
    from drgn.helpers.linux.timer import timer_base_for_each

    dump, prog = pair
    data = run(dump, "timer")
    assert data["jiffies"] == prog["jiffies"].value_()
    for cpu in data["cpus"]:
        theirs = {}
        for base in per_cpu(prog["timer_bases"], cpu["cpu"]):
            for t in timer_base_for_each(base.address_of_()):
                fn = prog.symbol(t.function.value_()).name
                theirs[f"{t.value_():#x}"] = (t.expires.value_(), fn)
        assert {t["timer"]: (t["expires"], t["function"]) for t in cpu["timers"]} == theirs
    assert any(t["function"] == "process_timeout" for c in data["cpus"] for t in c["timers"])


# -- search, log -T, foreach --------------------------------------------------------------------
def test_search_finds_the_words_drgn_reads(pair):
    from drgn.helpers.linux.list import list_for_each_entry

    dump, prog = pair
    target = prog["init_task"].tasks.address_of_().value_()
    data = run(dump, "search &init_task.tasks --limit 4096")
    assert not data["truncated"]
    hits = {int(h["virtual"], 16) for h in data["hits"]}
    for h in hits:
        assert int.from_bytes(prog.read(h, 8), "little") == target
    # the first and last tasks on the list point at the head
    tasks = list(
        list_for_each_entry("struct task_struct", prog["init_task"].tasks.address_of_(), "tasks")
    )
    assert tasks[0].tasks.prev.address_of_().value_() in hits
    assert tasks[-1].tasks.next.address_of_().value_() in hits
    assert len(run(dump, "search &init_task.tasks -l 1")["hits"]) == 1


def test_log_wall_clock_matches_drgn_and_the_guest_clock(pair, truth):
    from drgn.helpers.linux.timekeeping import ktime_get_coarse_ns, ktime_get_coarse_real_ns

    dump, prog = pair
    data = run(dump, "log -T")
    # CLOCK_REALTIME - CLOCK_MONOTONIC as drgn reads the timekeeper
    offset = ktime_get_coarse_real_ns(prog).value_() - ktime_get_coarse_ns(prog).value_()
    assert data["boot_ns"] == offset
    # the guest's `date +%s` (whole seconds) less /proc/uptime at the marker
    assert abs(data["boot_ns"] / 1e9 - truth["clock"]["boot_time"]) < 2.0
    records = data["records"]
    assert all(r["wall_ns"] == data["boot_ns"] + r["timestamp_ns"] for r in records)
    year = datetime.datetime.fromtimestamp(truth["clock"]["boot_time"], datetime.UTC).year
    assert records[0]["wall"].endswith(str(year))
    assert "[" + records[0]["wall"] + "] Linux version" in COMMANDS["log"].render(data)


def test_foreach_runs_each_command_per_task(pair, truth):
    dump, prog = pair
    pid = truth["fds"]["pid"]
    data = run(dump, "foreach 1,nc files")
    assert [t["pid"] for t in data["tasks"]] == [1, pid]
    assert data["tasks"][1]["data"]["fds"] == run(dump, f"files {pid}")["fds"]
    everyone = run(dump, "foreach all task -R pid,comm")["tasks"]
    assert {t["pid"] for t in everyone} == {t.pid for t in dump.kernel.tasks() if not t.is_idle}
    assert all(t["data"]["fields"]["pid"] == t["pid"] for t in everyone)
    sleepers = run(dump, "foreach sleep bt")["tasks"]
    assert sleepers and all(t["comm"] == "sleep" and "data" in t for t in sleepers)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", ["files 99999", "vm 99999", "sig 99999", "foreach 99999 vm"])
def test_unknown_pid_is_one_error(pair, line):
    dump, _prog = pair
    with pytest.raises(KvmcoreError) as exc:
        run(dump, line)
    assert "99999" in exc.value.message and "\n" not in exc.value.message


def test_bad_arguments_are_errors(pair):
    dump, _prog = pair
    assert run(dump, "kmem")["info"] == run(dump, "kmem -i")["info"]
    for line in ("foreach all ps", "foreach nosuchcomm vm", "search 1 --limit 0"):
        with pytest.raises(KvmcoreError):
            run(dump, line)


def test_a_looping_mount_list_is_one_error(samples, pair):
    """The second mount's mnt_list.next patched back to the first: a WalkError."""
    _dump, prog = pair
    from drgn.helpers.linux.fs import for_each_mount

    first, second = list(for_each_mount(prog))[:2]
    patch = {
        second.mnt_list.next.address_of_().value_(): word(first.mnt_list.address_of_().value_())
    }
    dump = patched_dump(samples, patch, SID)
    with pytest.raises(WalkError) as exc:
        run(dump, "mount")
    assert "loops" in exc.value.message and "\n" not in exc.value.message


def test_a_looping_maple_tree_is_one_error(samples, pair, truth):
    """The nc helper's VMA tree (one leaf) made an internal node whose first
    child is itself: a WalkError, not a hang."""
    _dump, prog = pair
    mm = _task(prog, truth["fds"]["pid"]).mm
    root = mm.mm_mt.ma_root.value_()
    node = root & ~0xFF
    looped = node | (2 << 3) | 2  # maple_range_64, an internal node
    slot = (
        prog.type("struct maple_node").member("mr64").offset
        + prog.type("struct maple_range_64").member("slot").offset
    )
    dump = patched_dump(
        samples,
        {mm.mm_mt.ma_root.address_of_().value_(): word(looped), node + slot: word(looped)},
        SID,
    )
    with pytest.raises(WalkError) as exc:
        run(dump, f"vm {truth['fds']['pid']}")
    assert "loops" in exc.value.message and "\n" not in exc.value.message


@pytest.mark.fast
def test_shell_runs_the_new_commands_on_the_committed_dump():
    """`kvmcore shell` on the committed small dump: each new command answers,
    bad input is one error line, the shell goes on."""
    manifest = json.loads((COMMITTED / "manifest.json").read_text())
    if "explore" not in manifest:
        pytest.fail(
            "the committed x86_64-small predates manifest schema 2: rebuild and "
            "commit it (python -m sample_dumps build --only x86_64-small --with-dbg "
            "--commit-copy)",
            pytrace=False,
        )
    pid = manifest["explore"]["fds"]["pid"]
    script = (
        "\n".join(
            [
                "kmem -i",
                f"files {pid}",
                f"vm {pid}",
                "mount",
                "net",
                "files 99999",
                "foreach 1 sig",
                "log -T",
                "q",
            ]
        )
        + "\n"
    )
    out = subprocess.run(
        [*KVMCORE, "shell", str(COMMITTED / "vmcore.mdf-d31-c")],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "MemTotal" in text and "/tmp/kvmcore.in" in text and "/bin/busybox" in text
    assert "devtmpfs" in text and "127.0.0.1/8" in text and "SIGINT" in text
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith("files: error:") and "99999" in errors[0]
    assert "Traceback" not in text + out.stderr
