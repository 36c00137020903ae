"""FreeBSD kernel support: the kernel model (threads, PCB registers, msgbuf,
linker files) and the helpers the FreeBSD translators in arches/ share."""

from __future__ import annotations

from .kernel import FreeBSDKernel, FreeBSDThread, KldModule

__all__ = ["FreeBSDKernel", "FreeBSDThread", "KldModule"]
