// Benchmark target for process_memory: 1 GiB of resident memory in four
// kinds a real process holds — random bytes (keys, compressed data), log-like
// text, pointer-rich heap objects and zeroed buffers — so compression and
// hashing do realistic work. Prints "ready" once every page is touched and
// then waits to be captured.
//
//   bench_target [MiB]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

int main(int argc, char **argv) {
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	size_t quarter = mib / 4 << 20;

	uint64_t *random = malloc(quarter);
	for (size_t i = 0; i < quarter / 8; i++)
		random[i] = next();

	char *text = malloc(quarter);
	static const char *verbs[] = {"GET", "POST", "PUT", "DELETE"};
	for (size_t off = 0; off < quarter;) {
		char line[160];
		int n = snprintf(line, sizeof line,
				 "2025-03-14T15:09:%02u.%06uZ INFO 10.0.%u.%u \"%s /api/v1/items/%u HTTP/1.1\" %u %u\n",
				 (unsigned)(next() % 60), (unsigned)(next() % 1000000), (unsigned)(next() % 256),
				 (unsigned)(next() % 256), verbs[next() % 4], (unsigned)(next() % 100000),
				 (unsigned)(200 + next() % 4 * 100), (unsigned)(next() % 65536));
		if ((size_t)n > quarter - off)
			n = quarter - off;
		memcpy(text + off, line, n);
		off += n;
	}

	struct node {
		struct node *next, *prev;
		uint64_t key;
		uint32_t flags, refs;
		void *data;
	};
	struct node *heap = malloc(quarter);
	size_t nodes = quarter / sizeof *heap;
	for (size_t i = 0; i < nodes; i++) {
		heap[i].next = &heap[(i + 1) % nodes];
		heap[i].prev = &heap[(i + nodes - 1) % nodes];
		heap[i].key = i * 2654435761u;
		heap[i].flags = i % 7;
		heap[i].refs = 1;
		heap[i].data = (char *)text + (next() % quarter);
	}

	char *zeros = malloc(quarter);
	for (size_t i = 0; i < quarter; i += 4096)
		zeros[i] = 1;
	memset(zeros, 0, quarter);

	printf("ready\n");
	fflush(stdout);
	pause();
	return 0;
}
