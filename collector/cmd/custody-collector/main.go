// Command custody-collector is custody's server: it enrols agents, pushes
// tasks to them, verifies and stores the evidence they stream, and seals
// each collection with a signed manifest.
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
		fmt.Fprintln(os.Stderr, "custody-collector:", err)
		os.Exit(1)
	}
}
