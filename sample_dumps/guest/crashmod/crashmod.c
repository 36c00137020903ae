// SPDX-License-Identifier: GPL-2.0
/*
 * crashmod: crash the kernel in a chosen way, for kvmcore's triage corpus
 * (Debian's kernels have no LKDTM).  Write a kind to the `crash` parameter:
 *
 *   insmod crashmod.ko && echo null > /sys/module/crashmod/parameters/crash
 *
 * Every kind runs in its own noinline function named crashmod_<kind>, so that a
 * backtrace of the crash names it.  Some kinds need sysctls set first (the guest's
 * corpus crasher does it): oops/BUG panic with panic_on_oops, the WARN with
 * panic_on_warn, the soft lockup with softlockup_panic, the hung task with
 * hung_task_panic and a short hung_task_timeout_secs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/delay.h>
#include <linux/preempt.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kvmcore triage corpus: crash the kernel on demand");

static volatile int crashmod_zero;
static volatile unsigned long crashmod_bad_addr = 0xdead000000000100UL;
static volatile size_t crashmod_len = 16;

static noinline void crashmod_null(void)
{
	*(volatile int *)NULL = 0x4b564d;   /* NULL pointer dereference */
}

static noinline void crashmod_bug(void)
{
	BUG();
}

static noinline void crashmod_warn(void)
{
	WARN(1, "crashmod: warning number %d\n", 42);
}

static noinline void crashmod_list(void)
{
	static LIST_HEAD(head);
	static struct list_head a, b;

	list_add(&a, &head);
	a.next = &b;            /* corrupt: a.next->prev no longer points back */
	list_add(&b, &a);       /* CONFIG_DEBUG_LIST: list_add corruption, BUG */
}

static noinline void crashmod_softlockup(void)
{
	preempt_disable();
	for (;;)
		cpu_relax();    /* the watchdog's hrtimer sees a CPU that never schedules */
}

static noinline void crashmod_hung(void)
{
	for (;;) {
		set_current_state(TASK_UNINTERRUPTIBLE);
		schedule();     /* D state, never woken: khungtaskd reports it */
	}
}

static noinline int crashmod_divide(void)
{
	return 1000 / crashmod_zero;    /* #DE: divide error */
}

static noinline void crashmod_stack(void)
{
	char buf[16];
	volatile char *p = buf;
	size_t i;

	/* one word past the buffer: the stack protector's canary. Byte by byte
	 * through a volatile pointer: a memset() of a known-size buffer is caught by
	 * FORTIFY_SOURCE first (a BUG in fortify_panic, not this crash) */
	for (i = 0; i < crashmod_len + 8; i++)
		p[i] = 0x41;
	barrier_data(buf);
}

static noinline void crashmod_panic(void)
{
	panic("crashmod: explicit panic %d at %px\n", 42, &crashmod_zero);
}

static noinline void crashmod_gpf(void)
{
	*(volatile int *)crashmod_bad_addr = 1;  /* non-canonical: general protection fault */
}

#pragma GCC diagnostic ignored "-Winfinite-recursion"
static noinline int crashmod_recurse(int depth)
{
	volatile char pad[256];

	pad[0] = depth;
	return crashmod_recurse(depth + 1) + pad[0];   /* kernel stack overflow */
}

static noinline void crashmod_overflow(void)
{
	crashmod_recurse(0);
}

static char crash_kind[32];

static int crashmod_set(const char *val, const struct kernel_param *kp)
{
	char kind[32];

	strscpy(kind, val, sizeof(kind));
	strim(kind);
	strscpy(crash_kind, kind, sizeof(crash_kind));
	pr_info("crashmod: crash kind %s\n", kind);
	if (!strcmp(kind, "null"))
		crashmod_null();
	else if (!strcmp(kind, "bug"))
		crashmod_bug();
	else if (!strcmp(kind, "warn"))
		crashmod_warn();
	else if (!strcmp(kind, "list"))
		crashmod_list();
	else if (!strcmp(kind, "softlockup"))
		crashmod_softlockup();
	else if (!strcmp(kind, "hung"))
		crashmod_hung();
	else if (!strcmp(kind, "divide"))
		return crashmod_divide();
	else if (!strcmp(kind, "stack"))
		crashmod_stack();
	else if (!strcmp(kind, "panic"))
		crashmod_panic();
	else if (!strcmp(kind, "gpf"))
		crashmod_gpf();
	else if (!strcmp(kind, "overflow"))
		crashmod_overflow();
	else if (kind[0])
		return -EINVAL;
	return 0;
}

static const struct kernel_param_ops crashmod_ops = {
	.set = crashmod_set,
	.get = param_get_string,
};
static struct kparam_string crashmod_kps = { .maxlen = sizeof(crash_kind), .string = crash_kind };
module_param_cb(crash, &crashmod_ops, &crashmod_kps, 0600);
MODULE_PARM_DESC(crash, "null|bug|warn|list|softlockup|hung|divide|stack|panic|gpf|overflow");
