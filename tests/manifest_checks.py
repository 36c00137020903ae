"""Checks of the kernel model against a sample's manifest (what the guest's
init started, from its console), shared by the tests of each dump kind."""

from __future__ import annotations


def assert_tasks_match_manifest(task_list, manifest: dict) -> None:
    """Every process and thread the manifest lists is in the task walk with its
    comm, thread group and parent's pid; the walk was not cut short."""
    assert not task_list.partial, task_list.problem
    by_pid = {t.pid: t for t in task_list.tasks if not t.is_idle}
    for p in manifest["processes"]:
        t = by_pid.get(p["pid"])
        assert t is not None, f"manifest process {p} missing from ps"
        assert (t.comm, t.tgid, t.ppid) == (p["comm"], p["pid"], p["ppid"]), (p, t)
    for th in manifest["threads"]:
        t = by_pid.get(th["tid"])
        assert t is not None, f"manifest thread {th} missing from ps"
        assert (t.comm, t.tgid) == (th["comm"], th["tgid"]), (th, t)


def assert_idle_task_per_cpu(task_list, cpus: int) -> None:
    """One idle task per CPU the guest had, named as the kernel names them."""
    idle = {t.comm for t in task_list.tasks if t.is_idle}
    assert idle == {f"swapper/{cpu}" for cpu in range(cpus)}


def assert_marker_then_panic(texts: list[str], manifest: dict) -> int:
    """The log holds the marker init wrote, then the panic line with the
    manifest's message; the panic line's index."""
    assert manifest["marker"] in texts
    panic_at = next(i for i, t in enumerate(texts) if "Kernel panic - not syncing" in t)
    assert manifest["panic"]["message"] in texts[panic_at]
    assert texts.index(manifest["marker"]) < panic_at
    return panic_at
