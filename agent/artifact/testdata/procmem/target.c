// Target for the process_memory tests: puts a marker string on the heap and
// a value in a global, optionally maps a file past its end (pages that read
// as unreadable), starts a few threads, and prints a heartbeat so a test can
// tell that the process still runs after a frozen capture.
//
//   target MARKER GLOBAL [BEYOND_EOF_FILE]
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

long custody_global;

static void *idle(void *arg) {
	(void)arg;
	for (;;)
		sleep(1);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: target MARKER GLOBAL [BEYOND_EOF_FILE]\n");
		return 2;
	}
	char *heap = malloc(strlen(argv[1]) + 1);
	strcpy(heap, argv[1]);
	custody_global = strtol(argv[2], NULL, 0);

	void *beyond = NULL;
	if (argc > 3) {
		long pg = sysconf(_SC_PAGESIZE);
		int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || ftruncate(fd, pg) < 0) {
			perror(argv[3]);
			return 1;
		}
		// Four pages over a one-page file: pages 2 to 4 lie past its end
		// and cannot be read, by the process or anyone else.
		beyond = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (beyond == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		strcpy(beyond, "FIRST-PAGE-READABLE");
	}

	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&th[i], NULL, idle, NULL);

	printf("ready heap=%p beyond=%p\n", (void *)heap, beyond);
	fflush(stdout);
	for (unsigned long tick = 1;; tick++) {
		printf("tick %lu\n", tick);
		fflush(stdout);
		usleep(5000);
	}
}
