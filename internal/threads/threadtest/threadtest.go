// Package threadtest reads what the kernel says about this process's
// threads, for tests of code that changes their scheduling: /proc's own
// account, not the syscalls under test.
package threadtest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Fields of /proc/PID/task/TID/stat (1-based, as proc(5) numbers them).
const (
	FieldNice   = 19
	FieldPolicy = 41
)

// Stat reads field n of every thread's stat, by thread id. A thread that
// exits while it reads is left out.
func Stat(t testing.TB, n int) map[int]int {
	t.Helper()
	paths, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited
		}
		// Fields after the command (which may hold spaces) start at ") ",
		// with field 3.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		v, err := strconv.Atoi(f[n-3])
		if err != nil {
			t.Fatalf("%s field %d: %v", p, n, err)
		}
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out[tid] = v
	}
	return out
}

// MoreThreads makes the runtime start threads: blocking system calls on
// many goroutines at once pull in new Ms.
func MoreThreads() {
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			var st unix.Stat_t
			for range 1000 {
				unix.Stat("/", &st)
			}
		})
	}
	wg.Wait()
}
