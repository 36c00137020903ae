"""The sample table: one row per sample.  Adding an architecture is one row."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# makedumpfile options per output format name (the ELF input is header-fixed first)
MDF_FORMATS = {
    "mdf-d31-c": ["-c", "-d", "31"],
    "mdf-d31-l": ["-l", "-d", "31"],
    "mdf-d31-E": ["-E", "-d", "31"],
    "mdf-d31-F": ["-c", "-d", "31", "-F"],  # flattened, written to stdout
}

# manifest metadata per format name: (format, filtered, compression)
FORMAT_INFO = {
    "elf": ("elf", None, None),
    "elf-paging": ("elf-paging", None, None),
    "kdump-zlib": ("kdump-flattened", None, "zlib"),
    "mdf-d31-c": ("kdump", "d31", "zlib"),
    "mdf-d31-l": ("kdump", "d31", "lzo"),
    "mdf-d31-E": ("elf-filtered", "d31", None),
    "mdf-d31-F": ("kdump-flattened", "d31", "zlib"),
    "proc-elf": ("elf", None, None),
    "xen-core": ("xen-core", None, None),  # xl dump-core of the crashed guest
    "xen-core-live": ("xen-core", None, None),  # xl dump-core of the running guest
}


@dataclass(frozen=True)
class Arch:
    name: str  # ELF/uname machine: x86_64, aarch64, i686
    debian_arch: str  # amd64, arm64, i386
    flavour: str  # kernel flavour: amd64, arm64, 686-pae
    qemu_binary: str
    machine: str | None  # -M
    console: str  # console= device
    modules: tuple[str, ...]  # modules insmod'ed by the guest init (deps resolved)
    panic_wait: str  # "pvpanic" (QMP GUEST_PANICKED) or "serial"
    cc: str  # C compiler for the guest threaded_task
    cc_flags: tuple[str, ...] = ()  # replaces the default "-O2 -static -pthread" when set
    threaded_task_src: str = "threaded_task.c"  # under sample_dumps/guest/
    # Debian suite the kernel, busybox-static and -dbg come from, through a private apt
    # configuration at the host's mirror (None: the host's own apt sources)
    suite: str | None = None
    # s390x and ppc64: QEMU has no vmcoreinfo device there (the kernel's own note is
    # found in memory), "-action panic=pause" alone emits GUEST_PANICKED
    vmcoreinfo_device: bool = True
    qemu_extra: tuple[str, ...] = ()  # more QEMU options for this arch


# a small stock module of the kernel package, for `mods` on the architectures whose
# guests need no module of their own (no vmcoreinfo or pvpanic device); recorded
# by the guest in the manifest (schema 3: /proc/modules)
NEW_ARCH_MODULES = ("crc_itu_t",)

ARCHES = {
    "amd64": Arch(
        "x86_64",
        "amd64",
        "amd64",
        "qemu-system-x86_64",
        None,
        "ttyS0",
        ("qemu_fw_cfg", "pvpanic_mmio"),
        "pvpanic",
        "gcc",
    ),
    "arm64": Arch(
        "aarch64",
        "arm64",
        "arm64",
        "qemu-system-aarch64",
        "virt",
        "ttyAMA0",
        ("qemu_fw_cfg",),
        "serial",
        "aarch64-linux-gnu-gcc",
    ),
    # no 32-bit libc on the host: a libc-free threaded_task built with the host gcc -m32
    "i386": Arch(
        "i686",
        "i386",
        "686-pae",
        "qemu-system-i386",
        None,
        "ttyS0",
        ("qemu_fw_cfg", "pvpanic_mmio"),
        "pvpanic",
        "gcc",
        (
            "-m32",
            "-march=i686",
            "-O2",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-pic",
            "-no-pie",
            "-fno-stack-protector",
            "-fcf-protection=none",
        ),
        "threaded_task_i386.c",
    ),
    # riscv64 exists in Debian only from trixie (6.12); QEMU's riscv virt machine has no
    # vmcoreinfo device (fw_cfg without DMA), so the dump carries no VMCOREINFO note:
    # kvmcore finds the kernel's own note in memory
    "riscv64": Arch(
        "riscv64",
        "riscv64",
        "riscv64",
        "qemu-system-riscv64",
        "virt",
        "ttyS0",
        NEW_ARCH_MODULES,
        "serial",
        "riscv64-linux-gnu-gcc",
        suite="trixie",
        vmcoreinfo_device=False,
    ),
    # 32-bit Arm: trixie's 6.12 armmp kernel (no BTF, no KALLSYMS_ALL: symbols and types
    # from the -dbg vmlinux or a System.map); its config lacks FW_CFG_SYSFS, so the dump
    # has no VMCOREINFO note even with QEMU's device: kvmcore finds the kernel's own in memory
    "armhf": Arch(
        "armv7l",
        "armhf",
        "armmp",
        "qemu-system-arm",
        "virt",
        "ttyAMA0",
        NEW_ARCH_MODULES,
        "serial",
        "arm-linux-gnueabihf-gcc",
        suite="trixie",
        vmcoreinfo_device=False,
    ),
}


@dataclass(frozen=True)
class SampleSpec:
    id: str
    arch: Arch
    formats: tuple[str, ...]  # files produced, named vmcore.<format>
    memory_mb: int = 256
    smp: int = 2
    cpu: str | None = None  # -cpu
    kaslr: bool = True
    # "qemu" (dump-guest-memory), "kdump" (real kexec -p capture) or "xen-pv" (xl
    # dump-core of a PV guest of Xen under QEMU: memory_mb and smp are the guest's)
    kind: str = "qemu"
    extra_append: str = ""
    default: bool = True  # part of `build` without --only
    commit_copy: bool = False  # may be copied into sample_dumps/committed/
    notes: str = ""
    extra: dict = field(default_factory=dict)
    extra_tasks: int = 0  # more `sleep` processes started by init (scale samples)
    cache_subdir: str = "samples"  # scale samples live apart from the test samples
    # the manifest schema the sample's tests need (2: the guest's /proc/meminfo, mounts,
    # net devices, fds and boot time, read by tests/test_explore_more.py; 3: its
    # /proc/modules, read by tests/test_mods_new_arches.py); a cached sample of an
    # older schema is rebuilt, others are kept
    min_schema: int = 1
    # the oldest kernel release the sample's tests expect: a cached sample of an older
    # kernel (s390x and ppc64le built from bookworm's 6.1 before their rows moved to
    # trixie's 6.12) is rebuilt
    min_release: str | None = None


# the non-PAE 686 flavour (2-level paging, 4 MB pages) of the same i386 build
ARCHES["i386-686"] = replace(ARCHES["i386"], flavour="686")
# 32-bit Arm's LPAE flavour (armmp-lpae: three-level long-descriptor tables)
ARCHES["armhf-lpae"] = replace(ARCHES["armhf"], flavour="armmp-lpae")
A64, ARM, I386, RV64 = ARCHES["amd64"], ARCHES["arm64"], ARCHES["i386"], ARCHES["riscv64"]
ALL_MDF = ("mdf-d31-c", "mdf-d31-l", "mdf-d31-E", "mdf-d31-F")

SAMPLES: list[SampleSpec] = [
    SampleSpec("x86_64-kaslr", A64, ("elf", "kdump-zlib") + ALL_MDF, min_schema=2),
    SampleSpec(
        "x86_64-nokaslr", A64, ("elf", "kdump-zlib", "mdf-d31-c", "elf-paging"), kaslr=False
    ),
    SampleSpec("arm64-kaslr", ARM, ("elf", "kdump-zlib"), cpu="cortex-a57"),
    SampleSpec("arm64-nokaslr", ARM, ("elf", "kdump-zlib"), cpu="cortex-a57", kaslr=False),
    SampleSpec("x86_64-small", A64, ("mdf-d31-c",), memory_mb=128, commit_copy=True, min_schema=2),
    SampleSpec(
        "x86_64-kdump",
        A64,
        ("proc-elf", "mdf-d31-l"),
        memory_mb=512,
        kind="kdump",
        extra_append="crashkernel=160M",
    ),
    # Debian's 686-pae kernel (PAE paging, no BTF: types need the -dbg vmlinux)
    SampleSpec("i386-pae", I386, ("elf", "kdump-zlib"), cpu="max"),
    SampleSpec("i386-nopae", ARCHES["i386-686"], ("elf",), cpu="max"),
    # the amd64 kernel with LA57 offered: it enables 5-level paging (pgtable_l5_enabled=1)
    SampleSpec("x86_64-la57", A64, ("elf",), cpu="qemu64,+la57"),
    # trixie's 6.12 riscv64 kernel on QEMU's virt machine (Sv57 offered by QEMU 7.2's rv64
    # cpu); Debian's riscv64 config has no RANDOMIZE_BASE, so no KASLR
    SampleSpec("riscv64", RV64, ("elf", "kdump-zlib"), cpu="rv64", kaslr=False, min_schema=3),
    # trixie's 6.12 armmp kernel (short descriptors, 3G/1G split) on QEMU's virt machine;
    # 32-bit Arm has no KASLR
    # the armmp-lpae flavour of the same trixie build: LPAE (long-descriptor) page tables
    SampleSpec(
        "armhf-lpae",
        ARCHES["armhf-lpae"],
        ("elf",),
        cpu="cortex-a15",
        kaslr=False,
        min_schema=3,
    ),
    SampleSpec(
        "armhf",
        ARCHES["armhf"],
        ("elf", "kdump-zlib"),
        cpu="cortex-a15",
        kaslr=False,
        min_schema=3,
    ),
]

# s390x and ppc64le (big-endian s390x, little-endian ppc64 with the radix MMU of POWER9):
# trixie's 6.12 kernels, which have BTF and KALLSYMS_ALL (bookworm's 6.1 have no BTF);
# both panic through firmware (SCLP / RTAS ibm,os-term) which QEMU reports as GUEST_PANICKED
ARCHES["s390x"] = Arch(
    "s390x",
    "s390x",
    "s390x",
    "qemu-system-s390x",
    "s390-ccw-virtio",
    "ttysclp0",
    NEW_ARCH_MODULES,
    "guest-panicked",
    "s390x-linux-gnu-gcc",
    suite="trixie",
    vmcoreinfo_device=False,
    qemu_extra=("-action", "panic=pause"),
)
ARCHES["ppc64el"] = Arch(
    "ppc64le",
    "ppc64el",
    "powerpc64le",
    "qemu-system-ppc64",
    "pseries",
    "hvc0",
    NEW_ARCH_MODULES,
    "guest-panicked",
    "powerpc64le-linux-gnu-gcc",
    suite="trixie",
    vmcoreinfo_device=False,
    qemu_extra=("-vga", "none", "-action", "panic=pause"),
)
SAMPLES += [
    SampleSpec(
        "s390x",
        ARCHES["s390x"],
        ("elf", "kdump-zlib"),
        cpu="max",
        min_release="6.12",
        min_schema=3,
    ),
    SampleSpec(
        "ppc64le",
        ARCHES["ppc64el"],
        ("elf", "kdump-zlib"),
        cpu="power9",
        min_release="6.12",
        min_schema=3,
    ),
]

# Debian 12's Xen 4.17 under QEMU TCG, a PV dom0 and a domU of the amd64 kernel running
# the samples' guest init (xen.py): `xl dump-core` of the crashed guest and (PV) of the
# running one; a PV guest's kernel is not relocated (no KASLR). The HVM guest is the slow
# tier (default=False; ./dev.sh slow): its dump alone takes ~10 minutes under TCG
SAMPLES += [
    SampleSpec(
        "xen-pv", A64, ("xen-core", "xen-core-live"), memory_mb=128, kaslr=False, kind="xen-pv"
    ),
    SampleSpec("xen-hvm", A64, ("xen-core",), memory_mb=128, kind="xen-hvm", default=False),
]

BY_ID = {s.id: s for s in SAMPLES}


def scale_spec(memory_mb: int, extra_tasks: int) -> SampleSpec:
    """An x86_64 ELF-only sample with the given guest memory and extra task count,
    for the benchmark's scale series (bench --scale); cached under scale/<ID>/."""
    return SampleSpec(
        f"x86_64-m{memory_mb}-t{extra_tasks}",
        A64,
        ("elf",),
        memory_mb=memory_mb,
        default=False,
        extra_tasks=extra_tasks,
        cache_subdir="scale",
        notes="benchmark scale series",
    )


def default_ids() -> list[str]:
    return [s.id for s in SAMPLES if s.default]
