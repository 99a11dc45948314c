package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/custodyhq/custody/agent/artifact"
	"github.com/custodyhq/custody/agent/local"
	"github.com/custodyhq/custody/agent/session"
	"github.com/custodyhq/custody/internal/artifactflags"
	"github.com/custodyhq/custody/internal/manifest"
)

var version = "dev"

func run(ctx context.Context, args []string) error {
	root := &cobra.Command{
		Use:           "custody-agent",
		Short:         "custody's agent: captures volatile evidence and streams it to a collector",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.AddCommand(runCmd(), collectCmd())
	root.AddCommand(preflightCmd())
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

func newLogger(format string) *slog.Logger {
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if format == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	return slog.New(h)
}

func runCmd() *cobra.Command {
	var cfg session.Config
	var tokenFile, logFormat string
	var lim limits
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run as a daemon: enrol, keep a session to the collector, execute tasks",
		Long: `run keeps one outbound mutual-TLS session to the collector and executes tasks the
moment they are pushed. On first start it enrols with a join token, read from
$CUSTODY_JOIN_TOKEN or --join-token-file (never from the command line, where ps would
show it), and keeps its key and certificate in --state-dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = newLogger(logFormat)
			if err := lim.apply(cfg.Logger); err != nil {
				return err
			}
			cfg.Version = version
			cfg.JoinToken = os.Getenv("CUSTODY_JOIN_TOKEN")
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("join token: %w", err)
				}
				cfg.JoinToken = strings.TrimSpace(string(b))
			}
			return session.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Collector, "collector", envOr("CUSTODY_COLLECTOR", "127.0.0.1:7443"), "collector address host:port ($CUSTODY_COLLECTOR)")
	f.StringVar(&cfg.ServerName, "server-name", "", "name in the collector's certificate (default: host of --collector)")
	f.StringVar(&cfg.CAFile, "ca", envOr("CUSTODY_CA", ""), "CA bundle to verify the collector at enrolment ($CUSTODY_CA)")
	f.StringVar(&cfg.StateDir, "state-dir", envOr("CUSTODY_STATE_DIR", "/var/lib/custody-agent"), "where the agent keeps its key and certificate")
	f.StringVar(&tokenFile, "join-token-file", "", "file holding a join token")
	f.StringVar(&cfg.Env.ProcRoot, "proc", "/proc", "procfs root")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	lim.addFlags(f)
	f.DurationVar(&cfg.MaxBackoff, "max-backoff", time.Minute, "longest wait between reconnects")
	return cmd
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func collectCmd() *cobra.Command {
	var out, caseID, reason, logFormat string
	var arts []string
	var artFlags *artifactflags.Set
	var lim limits
	var env artifact.Env
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Capture artifacts once into a local directory (no collector needed)",
		Example: `  custody-agent collect --artifacts host,processes --out /var/tmp/ir-1
  custody-agent collect --artifacts file --path /var/tmp/mem.lime --out /mnt/evidence/ir-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lim.apply(newLogger(logFormat)); err != nil {
				return err
			}
			if out == "" {
				return errors.New("--out DIR is required")
			}
			byName, err := artFlags.Params(arts)
			if err != nil {
				return err
			}
			var reqs []local.Request
			for _, a := range arts {
				reqs = append(reqs, local.Request{Name: a, Params: byName[a]})
			}
			log := newLogger(logFormat)
			facts := session.HostFacts(env)
			m, err := local.Collect(cmd.Context(), local.Options{
				Dir: out, CaseID: caseID, Reason: reason, Version: version, Env: env, Logger: log,
				// No collector shares this host's CPUs with the agent here,
				// and with 1 MiB chunks two workers stay well inside the
				// memory limit.
				CompressWorkers: runtime.GOMAXPROCS(0),
				Agent:           manifest.Agent{Hostname: facts.GetHostname(), Kernel: facts.GetKernel(), OS: facts.GetOs(), Arch: facts.GetArch(), Version: version},
			}, reqs)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s collection in %s\n", m.CollectionID, m.State, out)
			for _, a := range m.Artifacts {
				fmt.Fprintf(cmd.OutOrStdout(), "  %-12s %-8s %10d bytes  sha256 %s\n", a.Name, a.State, a.RawSize, a.AgentSHA256)
			}
			if m.State != "complete" {
				return fmt.Errorf("collection %s", m.State)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory to write the artifacts and manifest.json to")
	f.StringSliceVar(&arts, "artifacts", []string{"host", "processes"}, "artifacts to capture: "+strings.Join(artifact.Names(), ", "))
	f.StringVar(&caseID, "case", "local", "case id recorded in the manifest")
	f.StringVar(&reason, "reason", "", "why this evidence is collected")
	artFlags = artifactflags.Register(f)
	f.StringVar(&env.ProcRoot, "proc", "/proc", "procfs root")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	lim.addFlags(f)
	return cmd
}
