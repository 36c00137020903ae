"""The crash signature's normalization and classification (kvmcore/triage/signature.py),
on log lines and backtraces as real dumps of the triage corpus hold them."""

from __future__ import annotations

import pytest

from kvmcore.triage.signature import (
    GENERIC_FRAMES,
    Facts,
    classify,
    normalize_function,
    normalize_message,
    pick_frames,
    signature,
)

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("crashmod_null+0x5/0x20 [crashmod]", "crashmod_null"),
        ("panic+0x177/0x2f4", "panic"),
        ("__handle_sysrq.cold+0x44/0x11c", "__handle_sysrq"),
        ("foo.isra.0+0x10/0x20", "foo"),
        ("bar.constprop.3", "bar"),
        ("baz.part.1.cold+0x1/0x2", "baz"),
        ("oops_end.cold+0x18/0x18", "oops_end"),
        ("0xffffffffc03af230", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_function(raw, expected):
    assert normalize_function(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        # addresses: 8+ hex digits, with or without 0x
        (
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "BUG: kernel NULL pointer dereference, address: ADDR",
        ),
        (
            "list_add corruption. next->prev should be prev (ffffffffc0a3e2c0), but was "
            "ffffffffc0a3e2d0. (next=ffffffffc0a3e2b0).",
            "list_add corruption. next->prev should be prev (ADDR), but was ADDR. (next=ADDR).",
        ),
        # pids, CPUs, seconds; comm:pid keeps the comm
        (
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [crasher:153]",
            "watchdog: BUG: soft lockup - CPU#N stuck for Ns! [crasher:PID]",
        ),
        (
            "INFO: task crasher:152 blocked for more than 2 seconds.",
            "INFO: task crasher:PID blocked for more than N seconds.",
        ),
        # source paths lose their directories when absolute, line numbers go;
        # symbol offsets go
        (
            "WARNING: CPU: 1 PID: 152 at /root/.cache/kvmcore/corpus/.module/6.1.0-57-amd64/"
            "crashmod.c:41 crashmod_warn+0x16/0x20 [crashmod]",
            "WARNING: CPU: N PID: N at crashmod.c:N crashmod_warn [crashmod]",
        ),
        ("kernel BUG at lib/list_debug.c:30!", "kernel BUG at lib/list_debug.c:N!"),
        (
            "stack-protector: Kernel stack is corrupted in: crashmod_stack+0x44/0x50 [crashmod]",
            "stack-protector: Kernel stack is corrupted in: crashmod_stack [crashmod]",
        ),
        # the log's timestamp goes; words with digits stay
        ("[    3.226124] Oops: 0002 [#1] PREEMPT SMP NOPTI", "Oops: N [#N] PREEMPT SMP NOPTI"),
        ("ext4_fill_super on x86_64 at 0x1c", "ext4_fill_super on x86_64 at N"),
        ("kworker/1:2 stuck", "kworker/N:PID stuck"),
    ],
)
def test_normalize_message(raw, expected):
    assert normalize_message(raw) == expected


def test_normalize_message_is_stable_across_kaslr_and_pids():
    a = "BUG: unable to handle page fault for address: ffffa0c2c0a3e2c0 (pid 152, cpu 1)"
    b = "BUG: unable to handle page fault for address: ffffb1d3d0b4f3d0 (pid 977, cpu 0)"
    assert normalize_message(a) == normalize_message(b)


def test_message_is_bounded():
    assert len(normalize_message("x" * 1000)) == 160


# log excerpts of the corpus (timestamps kept: the classifier strips them)
NULL_LOG = [
    "[    3.225427] crashmod: crash kind null",
    "[    3.226124] BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "[    3.226300] #PF: supervisor write access in kernel mode",
    "[    3.226400] #PF: error_code(0x0002) - not-present page",
    "[    3.226500] PGD 0 P4D 0 ",
    "[    3.226791] Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "[    3.227354] RIP: 0010:crashmod_null+0x5/0x20 [crashmod]",
    "[    3.234936] Kernel panic - not syncing: Fatal exception",
]
BUG_LOG = [
    "[    3.1] ------------[ cut here ]------------",
    "[    3.2] kernel BUG at /tmp/build/crashmod.c:37!",
    "[    3.3] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
    "[    3.4] Kernel panic - not syncing: Fatal exception",
]
LIST_LOG = [
    "[    3.0] list_add corruption. next->prev should be prev (ffffffffc0a3e2c0), but was "
    "ffffffffc0a3e2d0. (next=ffffffffc0a3e2b0).",
    "[    3.1] ------------[ cut here ]------------",
    "[    3.2] kernel BUG at lib/list_debug.c:30!",
    "[    3.3] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
    "[    3.4] Kernel panic - not syncing: Fatal exception",
]
WARN_LOG = [
    "[    1.0] WARNING: CPU: 0 PID: 1 at drivers/foo.c:10 foo_probe+0x1/0x2",  # an old one
    "[    1.1] ---[ end trace 0000000000000000 ]---",
    "[    3.1] ------------[ cut here ]------------",
    "[    3.2] crashmod: warning number 42",
    "[    3.3] WARNING: CPU: 1 PID: 152 at /x/crashmod.c:41 crashmod_warn+0x16/0x20 [crashmod]",
    "[    3.4] Kernel panic - not syncing: kernel: panic_on_warn set ...",
]
SOFT_LOG = [
    "[    7.7] watchdog: BUG: soft lockup - CPU#1 stuck for 4s! [crasher:153]",
    "[    7.8] RIP: 0010:crashmod_softlockup+0xe/0x10 [crashmod]",
    "[    7.9] Kernel panic - not syncing: softlockup: hung tasks",
]
HUNG_LOG = [
    "[    9.0] INFO: task crasher:152 blocked for more than 2 seconds.",
    "[    9.1] Kernel panic - not syncing: hung_task: blocked tasks",
]


@pytest.mark.parametrize(
    "panic,log,kind,message",
    [
        ("sysrq triggered crash", [], "sysrq", "sysrq triggered crash"),
        (
            "Fatal exception",
            NULL_LOG,
            "oops",
            "BUG: kernel NULL pointer dereference, address: ADDR",
        ),
        ("Fatal exception", BUG_LOG, "bug", "kernel BUG at crashmod.c:N!"),
        (
            "Fatal exception",
            LIST_LOG,
            "bug",
            "list_add corruption. next->prev should be prev (ADDR), but was ADDR. (next=ADDR).",
        ),
        (
            "kernel: panic_on_warn set ...",
            WARN_LOG,
            "warning",
            "WARNING: CPU: N PID: N at crashmod.c:N crashmod_warn [crashmod]",
        ),
        (
            "softlockup: hung tasks",
            SOFT_LOG,
            "soft_lockup",
            "watchdog: BUG: soft lockup - CPU#N stuck for Ns! [crasher:PID]",
        ),
        (
            "hung_task: blocked tasks",
            HUNG_LOG,
            "hung_task",
            "INFO: task crasher:PID blocked for more than N seconds.",
        ),
        (
            "Out of memory: compulsory panic_on_oom is enabled",
            [],
            "oom",
            "Out of memory: compulsory panic_on_oom is enabled",
        ),
        ("System is deadlocked on memory", [], "oom", "System is deadlocked on memory"),
        ("Hard LOCKUP", [], "hard_lockup", "Hard LOCKUP"),
        (
            "crashmod: explicit panic 42 at ffffffffc0a3e2c0",
            [],
            "panic",
            "crashmod: explicit panic N at ADDR",
        ),
        (
            "Fatal exception",
            [
                "[ 1.0] divide error: 0000 [#1] PREEMPT SMP NOPTI",
                "[ 1.1] Kernel panic - not syncing: Fatal exception",
            ],
            "oops",
            "divide error: N [#N] PREEMPT SMP NOPTI",
        ),
        ("Fatal exception", [], "oops", "Fatal exception"),
        # arm64: die() panics with "<str>: Fatal exception"
        (
            "Oops: Fatal exception",
            [
                "[ 10.2] Unable to handle kernel NULL pointer dereference at virtual address "
                "0000000000000000",
                "[ 10.3] Mem abort info:",
                "[ 10.4] Internal error: Oops: 0000000096000046 [#1] SMP",
                "[ 10.5] Kernel panic - not syncing: Oops: Fatal exception",
            ],
            "oops",
            "Unable to handle kernel NULL pointer dereference at virtual address ADDR",
        ),
        (
            "Oops - BUG: Fatal exception",
            [
                "[ 1.0] kernel BUG at lib/list_debug.c:30!",
                "[ 1.1] Internal error: Oops - BUG: 00000000f2000800 [#1] SMP",
            ],
            "bug",
            "kernel BUG at lib/list_debug.c:N!",
        ),
        (None, [], "panic", "(no panic message)"),
    ],
)
def test_classify(panic, log, kind, message):
    k, title = classify(panic, log)
    assert k == kind
    assert normalize_message(title) == message


SYSRQ_BT = [
    "pvpanic_panic_notify+0x60/0x85 [pvpanic]",
    "atomic_notifier_call_chain+0x52/0x80",
    "panic+0x177/0x2f4",
    "sysrq_handle_crash+0x16/0x20",
    "__handle_sysrq.cold+0x44/0x11c",
    "write_sysrq_trigger+0x24/0x40",
    "proc_reg_write+0x56/0xa0",
    "vfs_write+0xc7/0x3f0",
    "ksys_write+0x6b/0xf0",
    "do_syscall_64+0x5d/0xb0",
]
NULL_BT = [
    "pvpanic_panic_notify+0x60/0x85 [pvpanic]",
    "atomic_notifier_call_chain+0x52/0x80",
    "panic+0x177/0x2f4",
    "oops_end.cold+0x18/0x18",
    "page_fault_oops+0xf9/0x2b0",
    "exc_page_fault+0x70/0x170",
    "asm_exc_page_fault+0x22/0x30",
    "crashmod_null+0x5/0x15 [crashmod]",
    "crashmod_set+0x1a8/0x24e [crashmod]",
    "param_attr_store+0x94/0xe0",
    "module_attr_store+0x1d/0x30",
    "kernfs_fop_write_iter+0x12e/0x200",
    "vfs_write+0x235/0x3f0",
]
SOFT_BT = [
    "pvpanic_panic_notify+0x60/0x85 [pvpanic]",
    "atomic_notifier_call_chain+0x52/0x80",
    "panic+0x177/0x2f4",
    "watchdog_timer_fn.cold+0xc/0x16",
    "__hrtimer_run_queues+0x10d/0x250",
    "hrtimer_interrupt+0xf4/0x210",
    "__sysvec_apic_timer_interrupt+0x5d/0x110",
    "sysvec_apic_timer_interrupt+0x69/0x90",
    "asm_sysvec_apic_timer_interrupt+0x16/0x20",
    "crashmod_softlockup+0xe/0x10 [crashmod]",
    "crashmod_set+0x220/0x24e [crashmod]",
    "param_attr_store+0x94/0xe0",
]


def test_pick_frames_skips_the_panic_machinery():
    assert pick_frames(SYSRQ_BT) == [
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "proc_reg_write",
        "vfs_write",
    ]
    assert pick_frames(NULL_BT)[:2] == ["crashmod_null", "crashmod_set"]
    assert pick_frames(SOFT_BT)[:2] == ["crashmod_softlockup", "crashmod_set"]
    assert not set(pick_frames(NULL_BT)) & GENERIC_FRAMES


def test_pick_frames_of_a_blocked_task_skips_the_scheduler():
    bt = [
        "__schedule+0x1/0x2",
        "schedule+0x5e/0xd0",
        "crashmod_hung+0x1c/0x30 [crashmod]",
        "crashmod_set+0x1/0x2 [crashmod]",
    ]
    assert pick_frames(bt, blocked=True) == ["crashmod_hung", "crashmod_set"]


def test_signature_is_stable_across_kaslr():
    """Two dumps of one bug: other addresses, pids, CPUs and timestamps, one id."""

    def shift(lines):
        return [
            x.replace("0000000000000000", "0000000000000000")
            .replace("152", "977")
            .replace("3.22", "8.11")
            for x in lines
        ]

    a = signature(Facts("Fatal exception", NULL_LOG, NULL_BT))
    bt2 = [f.replace("+0x1a8/0x24e", "+0x1b0/0x250") for f in NULL_BT]
    b = signature(Facts("Fatal exception", shift(NULL_LOG), bt2))
    assert a.id == b.id and len(a.id) == 16
    other = signature(Facts("sysrq triggered crash", [], SYSRQ_BT))
    assert other.id != a.id


def test_hung_task_signature_takes_the_blocked_tasks_frames():
    khungtaskd = ["panic+0x1/0x2", "watchdog+0x1/0x2", "kthread+0x1/0x2"]
    blocked = [
        {"pid": 7, "comm": "other", "frames": ["__schedule", "schedule", "other_wait"]},
        {
            "pid": 152,
            "comm": "crasher",
            "frames": ["__schedule+0x1/0x2", "schedule+0x1/0x2", "crashmod_hung+0x1/0x2"],
        },
    ]
    sig = signature(Facts("hung_task: blocked tasks", HUNG_LOG, khungtaskd, blocked))
    assert sig.kind == "hung_task"
    assert sig.frames == ["crashmod_hung"]
