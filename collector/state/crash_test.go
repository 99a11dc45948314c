package state

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary double as a writer process that the crash
// test kills with SIGKILL in the middle of its transactions.
func TestMain(m *testing.M) {
	if path := os.Getenv("CUSTODY_STATE_CRASH_WRITER"); path != "" {
		crashWriter(path)
		return
	}
	os.Exit(m.Run())
}

// crashWriter updates one collection and one upload session forever, each
// transaction bumping a counter in both, so a torn write would show as a
// counter mismatch or an unreadable record.
func crashWriter(path string) {
	ctx := context.Background()
	d, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		_, err := d.UpdateCollection(ctx, "c1", func(c *Collection) error {
			c.Artifacts[0].BytesDone++
			c.Artifacts[0].Warnings = append(c.Artifacts[0].Warnings[:0], strconv.Itoa(i))
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		if i == 0 {
			fmt.Println("writing")
		}
	}
}

func TestSurvivesKill9MidWrite(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	d, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateCollection(ctx, Collection{ID: "c1", AgentID: "a1", State: Running, Artifacts: []Artifact{{Name: "file"}}}); err != nil {
		t.Fatal(err)
	}
	d.Close()

	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 0))
	var last int64
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "CUSTODY_STATE_CRASH_WRITER="+path)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		out.Read(buf) // the writer is in its loop
		time.Sleep(time.Duration(r.IntN(40)+5) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		d, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("seed %d round %d: reopen after kill -9: %v", seed, round, err)
		}
		var check string
		if err := d.db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
			t.Fatalf("seed %d round %d: integrity_check = %q, %v", seed, round, check, err)
		}
		c, err := d.GetCollection(ctx, "c1")
		if err != nil {
			t.Fatalf("seed %d round %d: %v", seed, round, err)
		}
		n := c.Artifacts[0].BytesDone
		if n < last {
			t.Fatalf("seed %d round %d: committed counter went back from %d to %d", seed, round, last, n)
		}
		if w := c.Artifacts[0].Warnings; len(w) != 1 {
			t.Fatalf("seed %d round %d: torn record %+v", seed, round, c.Artifacts[0])
		}
		last = n
		// And it goes on being usable.
		if _, err := d.UpdateCollection(ctx, "c1", func(c *Collection) error { c.Artifacts[0].BytesDone++; return nil }); err != nil {
			t.Fatalf("seed %d round %d: write after recovery: %v", seed, round, err)
		}
		last++
		d.Close()
	}
	if last < 5 {
		t.Fatalf("seed %d: the writer committed only %d transactions; the test did not exercise kill -9 mid-write", seed, last)
	}
}
