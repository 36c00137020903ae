/* Guest test program for i386 guests, built without a C library (no 32-bit
 * libc is installed on the build host: `gcc -m32 -nostdlib` only needs the
 * compiler and binutils).  Same behaviour as threaded_task.c:
 * Usage: threaded_task NTHREADS READY_FILE
 * Each worker names itself "worker-<i>" (prctl PR_SET_NAME), prints
 *   KVMCORE tid=<tid> tgid=<pid> comm=worker-<i>
 * on stdout; when all are named, the main thread creates READY_FILE.  Every
 * thread then blocks in pause() (state S) forever.  Threads are raw clone()s. */
#define NR_exit 1
#define NR_write 4
#define NR_open 5
#define NR_close 6
#define NR_getpid 20
#define NR_pause 29
#define NR_sched_yield 158
#define NR_prctl 172
#define NR_gettid 224
#define PR_SET_NAME 15
#define MAX_THREADS 16
#define STACK_SIZE 16384

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
	return r;
}

/* spawn(stack_top, fn, arg): clone(CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM)
 * with fn and arg placed on the child's stack; the child calls fn(arg). */
int spawn(char *stack_top, void (*fn)(int), int arg);
__asm__(".text\n.globl spawn\nspawn:\n"
	"push %ebx\npush %esi\npush %edi\n"
	"mov 16(%esp),%ecx\nmov 20(%esp),%eax\nmov 24(%esp),%edx\n"
	"sub $8,%ecx\nmov %edx,4(%ecx)\nmov %eax,0(%ecx)\n"
	"mov $120,%eax\nmov $0x50f00,%ebx\nxor %edx,%edx\nxor %esi,%esi\nxor %edi,%edi\n"
	"int $0x80\ntest %eax,%eax\njnz 1f\n"
	"pop %eax\ncall *%eax\nmov $1,%eax\nxor %ebx,%ebx\nint $0x80\n"
	"1:\npop %edi\npop %esi\npop %ebx\nret\n");

static char stacks[MAX_THREADS][STACK_SIZE] __attribute__((aligned(16)));
static volatile int named;

static int append(char *p, const char *s)
{
	int n = 0;
	while (s[n]) { p[n] = s[n]; n++; }
	return n;
}

static int append_num(char *p, long v)
{
	char tmp[16];
	int n = 0, k = 0;
	do { tmp[n++] = '0' + v % 10; v /= 10; } while (v);
	while (n) p[k++] = tmp[--n];
	return k;
}

static void worker(int i)
{
	char name[16], line[96];
	int n = append(name, "worker-");
	n += append_num(name + n, i);
	name[n] = 0;
	sys3(NR_prctl, PR_SET_NAME, (long)name, 0);
	n = append(line, "KVMCORE tid=");
	n += append_num(line + n, sys3(NR_gettid, 0, 0, 0));
	n += append(line + n, " tgid=");
	n += append_num(line + n, sys3(NR_getpid, 0, 0, 0));
	n += append(line + n, " comm=");
	n += append(line + n, name);
	line[n++] = '\n';
	sys3(NR_write, 1, (long)line, n);
	__sync_fetch_and_add(&named, 1);
	for (;;)
		sys3(NR_pause, 0, 0, 0);
}

__attribute__((used)) static void start_c(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	int n = 4;
	if (argc > 1) {
		n = 0;
		for (const char *s = argv[1]; *s >= '0' && *s <= '9'; s++)
			n = n * 10 + (*s - '0');
	}
	if (n > MAX_THREADS)
		n = MAX_THREADS;
	for (int i = 0; i < n; i++)
		if (spawn(stacks[i] + STACK_SIZE, worker, i) < 0) {
			sys3(NR_write, 2, (long)"clone failed\n", 13);
			sys3(NR_exit, 1, 0, 0);
		}
	while (named < n)
		sys3(NR_sched_yield, 0, 0, 0);
	if (argc > 2)
		sys3(NR_close, sys3(NR_open, (long)argv[2], 0101 /* O_WRONLY|O_CREAT */, 0644), 0, 0);
	for (;;)
		sys3(NR_pause, 0, 0, 0);
}

__asm__(".text\n.globl _start\n_start:\nxor %ebp,%ebp\nmov %esp,%eax\nand $-16,%esp\n"
	"sub $12,%esp\npush %eax\ncall start_c\nhlt\n");
