/* Guest test program: a process with a known number of named threads.
 * Usage: threaded_task NTHREADS READY_FILE
 * Each worker names itself "worker-<i>" and prints
 *   KVMCORE tid=<tid> tgid=<pid> comm=worker-<i>
 * on stdout (the serial console); when all are named, the main thread creates
 * READY_FILE.  Every thread then blocks in pause() (state S) forever. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_barrier_t named;

static void *worker(void *arg)
{
	char name[16];
	int i = (int)(long)arg;

	snprintf(name, sizeof(name), "worker-%d", i);
	pthread_setname_np(pthread_self(), name);
	printf("KVMCORE tid=%ld tgid=%d comm=%s\n", (long)syscall(SYS_gettid), (int)getpid(), name);
	fflush(stdout);
	pthread_barrier_wait(&named);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	pthread_t t;

	pthread_barrier_init(&named, NULL, n + 1);
	for (int i = 0; i < n; i++)
		if (pthread_create(&t, NULL, worker, (void *)(long)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	pthread_barrier_wait(&named);
	if (argc > 2)
		close(open(argv[2], O_WRONLY | O_CREAT, 0644));
	for (;;)
		pause();
}
