"""Type facts from VMCOREINFO's helper variables: SIZE(x), OFFSET(x.m),
LENGTH(x.m). They cover only what the kernel chose to export (page,
printk ring buffer, zone...), so they answer last, when BTF and DWARF are
absent or silent."""

from __future__ import annotations

from ..notes import VmcoreInfo


def _bare(type_name: str) -> str:
    """ "struct page" -> "page"; typedef names stay as they are."""
    for prefix in ("struct ", "union ", "enum "):
        if type_name.startswith(prefix):
            return type_name[len(prefix) :].strip()
    return type_name.strip()


class VmcoreInfoTypes:
    name = "vmcoreinfo"

    def __init__(self, info: VmcoreInfo) -> None:
        self.info = info

    def sizeof(self, type_name: str) -> int | None:
        return self.info.size(_bare(type_name))

    def offsetof(self, type_name: str, member: str) -> int | None:
        return self.info.offset(_bare(type_name), member)

    def array_length(self, type_name: str, member: str) -> int | None:
        bare = _bare(type_name)
        value = self.info.length(f"{bare}.{member}")
        return value if value is not None else self.info.length(member)

    def knows(self, type_name: str) -> bool:
        bare = _bare(type_name)
        return f"SIZE({bare})" in self.info or any(
            k.startswith(f"OFFSET({bare}.") for k in self.info
        )

    def members(self, type_name: str) -> list[str]:
        head = f"OFFSET({_bare(type_name)}."
        return [k[len(head) : -1] for k in self.info if k.startswith(head)]
