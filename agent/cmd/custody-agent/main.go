// Command custody-agent captures a host's volatile evidence: as a daemon
// (run) that keeps one outbound session to a collector and executes pushed
// tasks, or one-shot (collect) into a local directory.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "custody-agent:", err)
		os.Exit(1)
	}
}
