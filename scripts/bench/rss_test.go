package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/testenv"
)

// peakRSS makes cmd, not yet started, run under GNU time, and returns a
// function that, once cmd has run, gives the peak resident set size of
// cmd's program alone, in KiB.
//
// wait4's rusage will not do: Go starts a child with CLONE_VM (vfork), and
// at exec the kernel records the parent's peak RSS as the child's, so a
// program run from a benchmark process that has held 300 MiB reports at
// least 300 MiB (measured: /bin/true, 310 MiB). GNU time forks its child
// instead, whose count then starts from time's own few hundred KiB. The
// CPU times in cmd.ProcessState stay the program's (plus time's, about a
// millisecond).
func peakRSS(b *testing.B, cmd *exec.Cmd) func() int64 {
	b.Helper()
	gnuTime := testenv.NeedTool(b, "time")
	out := filepath.Join(b.TempDir(), "rss")
	cmd.Args = append([]string{gnuTime, "-f", "%M", "-o", out, "--", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = gnuTime
	return func() int64 {
		b.Helper()
		data, err := os.ReadFile(out)
		if err != nil {
			b.Fatal(err)
		}
		// A failed command's line comes first; the figure is last.
		words := strings.Fields(string(data))
		if len(words) == 0 {
			b.Fatalf("time -f %%M wrote nothing to %s", out)
		}
		kib, err := strconv.ParseInt(words[len(words)-1], 10, 64)
		if err != nil {
			b.Fatalf("time -f %%M wrote %q: %v", data, err)
		}
		return kib
	}
}
