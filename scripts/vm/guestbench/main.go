// Command guestbench runs inside the VM test's guest, before the agent
// starts, and measures physical-memory capture where nothing else is in
// the way: the LiME module dumping to /dev/null (its page walk alone:
// /dev/null copies nothing), the same module streaming over loopback TCP
// into a reader that drops it (what any LiME-over-TCP tool starts from),
// and the agent's own kcore and LiME sources writing into a discarding
// writer. It prints one CUSTODY-BENCH line per measurement;
// `guestbench N` repeats the set N times.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/agent/artifact"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "guestbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	rounds := 1
	if len(os.Args) > 1 {
		n, err := strconv.Atoi(os.Args[1])
		if err != nil || n < 1 {
			return fmt.Errorf("usage: guestbench [rounds]")
		}
		rounds = n
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return err
	}
	mod := artifact.DefaultLimeDir + "/" + unix.ByteSliceToString(u.Release[:]) + "/lime.ko"
	size, err := limeSize()
	if err != nil {
		return err
	}
	report := func(round int, name string, bytes int64, took time.Duration, err error) {
		if err != nil {
			fmt.Printf("CUSTODY-BENCH round=%d name=%s error=%q\n", round, name, err.Error())
			return
		}
		fmt.Printf("CUSTODY-BENCH round=%d name=%s bytes=%d seconds=%.3f\n", round, name, bytes, took.Seconds())
	}

	kind, err := artifact.Lookup("physical_memory")
	if err != nil {
		return err
	}
	// One round by default: repeated rounds in the same boot differ by
	// less than runs on a shared host do.
	for round := 1; round <= rounds; round++ {
		start := time.Now()
		err = limeTo(mod, "path=/dev/null format=lime timeout=0", nil)
		report(round, "lime-to-devnull", size, time.Since(start), err)

		// The same module streaming over loopback TCP into a reader that
		// only counts: what any LiME-over-TCP tool starts from.
		var got int64
		start = time.Now()
		err = limeTo(mod, "path=tcp:4444 format=lime localhostonly=1 timeout=0", func() error {
			var c net.Conn
			for deadline := time.Now().Add(30 * time.Second); ; {
				var err error
				if c, err = net.Dial("tcp", "127.0.0.1:4444"); err == nil {
					break
				}
				if time.Now().After(deadline) {
					return err
				}
				time.Sleep(10 * time.Millisecond)
			}
			defer c.Close()
			got, err = io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
			return err
		})
		report(round, "lime-tcp-to-discard", got, time.Since(start), err)

		for _, source := range []string{"kcore", "lime"} {
			var n counter
			start := time.Now()
			_, err := kind.Collect(ctx, artifact.Env{}, artifact.Params{"source": source}, &n)
			report(round, "agent-"+source+"-discard", int64(n), time.Since(start), err)
		}
	}
	return nil
}

// limeTo loads the module with params, running read beside it: the
// module's init returns when the dump is done.
func limeTo(path, params string, read func() error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	readErr := make(chan error, 1)
	if read != nil {
		go func() { readErr <- read() }()
	}
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil {
		return fmt.Errorf("load %s: %w", path, err)
	}
	if read != nil {
		if err := <-readErr; err != nil {
			return err
		}
	}
	return unix.DeleteModule("lime", unix.O_NONBLOCK)
}

// limeSize is the size of the image LiME writes: each top-level System RAM
// range of /proc/iomem with its 32-byte header.
func limeSize() (int64, error) {
	f, err := os.Open("/proc/iomem")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		span, name, ok := strings.Cut(line, " : ")
		if !ok || name != "System RAM" || strings.HasPrefix(line, " ") {
			continue
		}
		lo, hi, _ := strings.Cut(span, "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("/proc/iomem: %q", line)
		}
		n += int64(b-a+1) + 32
	}
	return n, sc.Err()
}

type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}
