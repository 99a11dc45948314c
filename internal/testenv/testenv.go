// Package testenv decides what a test does when the machine lacks something
// it needs (root, a tool, a device): skip with the reason on a developer's
// machine, fail under CI (CUSTODY_REQUIRE_ALL=1), where everything is
// installed and a skipped suite would be a silent hole in the evidence.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether missing prerequisites are failures.
func Required() bool { return os.Getenv("CUSTODY_REQUIRE_ALL") == "1" }

// Skip skips t with the reason, or fails it when prerequisites are required.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("required test cannot run (CUSTODY_REQUIRE_ALL=1): "+format, args...)
	}
	t.Skipf(format, args...)
}

// NeedRoot skips (or fails) unless running as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// NeedTool returns the path of a tool on PATH, skipping (or failing) if absent.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "%s is not installed", name)
	}
	return p
}
