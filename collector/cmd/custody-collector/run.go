package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/collector/service"
	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/threads"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// paths is where the collector keeps its PKI, state and evidence; each
// defaults to a place under one data directory.
type paths struct {
	dataDir  string
	pkiDir   string
	state    string
	evidence string
}

func (p *paths) register(cmd *cobra.Command, what ...string) {
	f := cmd.Flags()
	f.StringVar(&p.dataDir, "data-dir", envOr("CUSTODY_DATA_DIR", "/var/lib/custody"), "root for the PKI, state database and evidence directory ($CUSTODY_DATA_DIR)")
	for _, w := range what {
		switch w {
		case "pki":
			f.StringVar(&p.pkiDir, "pki", "", "PKI directory (default <data-dir>/pki)")
		case "state":
			f.StringVar(&p.state, "state", "", "state database (default <data-dir>/state.db)")
		case "evidence":
			f.StringVar(&p.evidence, "evidence", "", "local evidence directory (default <data-dir>/evidence)")
		}
	}
}

func (p *paths) resolve() {
	if p.pkiDir == "" {
		p.pkiDir = filepath.Join(p.dataDir, "pki")
	}
	if p.state == "" {
		p.state = filepath.Join(p.dataDir, "state.db")
	}
	if p.evidence == "" {
		p.evidence = filepath.Join(p.dataDir, "evidence")
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, args []string) error {
	root := &cobra.Command{
		Use:           "custody-collector",
		Short:         "custody's collector: enrols agents, verifies and seals evidence",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.AddCommand(serveCmd(), pkiCmd(), tokenCmd())
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

func serveCmd() *cobra.Command {
	var p paths
	var listen, readyFile, logFormat, configFile string
	var certTTL time.Duration
	var memLimitMiB int64
	var maxUploads int
	var sched string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the agent and responder APIs (mutual TLS only)",
		Long: `serve runs the collector. Evidence goes to the local evidence directory
(--evidence, default <data-dir>/evidence) unless --config names a file whose
store section selects another store:

  store:
    type: s3
    bucket: evidence-bucket
    prefix: custody
    kms_key_id: alias/custody-evidence
    object_lock: {mode: COMPLIANCE, retain_days: 365}

See the README's "Evidence in S3" for every key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p.resolve()
			var cfg fileConfig
			if configFile != "" {
				var err error
				if cfg, err = loadConfig(configFile); err != nil {
					return err
				}
				if cfg.Store != nil && cmd.Flags().Changed("evidence") {
					return fmt.Errorf("--evidence and the store section of %s both choose the evidence store; keep one", configFile)
				}
			}
			log := newLogger(logFormat)
			if memLimitMiB > 0 {
				// The collector's memory is bounded by configuration, not by
				// the number of agents: uploads are bounded by --max-uploads,
				// their chunk sizes shrink as more run at once, and the garbage
				// collector works to stay under this limit. Without a limit the
				// heap grows to twice what is live. The runtime lets the heap
				// grow to the limit before it collects, so the limit sets the
				// peak: 16 agents × 128 MiB to S3 peak at 217 MiB RSS with 192
				// (246 with 224), 500 agents with 50 uploading at 209 MiB, at
				// the same throughput.
				debug.SetMemoryLimit(memLimitMiB << 20)
			}
			switch sched {
			case "batch":
				// Ingest is bulk work spread over goroutines that hand
				// chunks to each other: network reads, decompression,
				// hashing, store writes. Under SCHED_OTHER each socket
				// wakeup preempts a thread that is hashing; under
				// SCHED_BATCH it waits for the slice to end. Measured with
				// an agent on the same two CPUs (go test -bench
				// MemoryImage2GiB ./scripts/bench): 2 GiB took 8.6 CPU-s
				// and 5.2 s under SCHED_OTHER, 6.9 CPU-s and 4.2 s under
				// SCHED_BATCH; the collector's context switches fell from
				// 58,000 to 9,600.
				if err := threads.Each(threads.Batch); err != nil {
					log.Warn("could not move the collector to SCHED_BATCH", "err", err)
				}
			case "normal":
			default:
				return fmt.Errorf("--sched %q: want batch or normal", sched)
			}
			return serve(cmd.Context(), p, cfg, listen, readyFile, certTTL, maxUploads, log)
		},
	}
	p.register(cmd, "pki", "state", "evidence")
	cmd.Flags().StringVar(&configFile, "config", "", "configuration file (YAML; its store section selects the evidence store)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7443", "address to listen on (port 0 picks a free one)")
	cmd.Flags().StringVar(&readyFile, "ready-file", "", "write the bound address here once serving")
	cmd.Flags().DurationVar(&certTTL, "agent-cert-ttl", 24*time.Hour, "lifetime of agent certificates")
	cmd.Flags().Int64Var(&memLimitMiB, "memory-limit-mib", 192, "soft memory limit for the Go runtime (GOMEMLIMIT), in MiB; 0 disables")
	cmd.Flags().IntVar(&maxUploads, "max-uploads", 16, "uploads in progress at once; more wait for a slot (about 8 MiB each, plus the S3 store's part buffers)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "text or json")
	cmd.Flags().StringVar(&sched, "sched", "batch", "CPU scheduling policy: batch (threads wait for a CPU's slice instead of preempting) or normal")
	return cmd
}

func newLogger(format string) *slog.Logger {
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if format == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	return slog.New(h)
}

func serve(ctx context.Context, p paths, cfg fileConfig, listen, readyFile string, certTTL time.Duration, maxUploads int, log *slog.Logger) error {
	started := time.Now()
	ca, err := pki.LoadCA(p.pkiDir)
	if err != nil {
		return fmt.Errorf("%w (run `custody-collector pki init` first)", err)
	}
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(p.pkiDir, pki.ServerCertFile), filepath.Join(p.pkiDir, pki.ServerKeyFile))
	if err != nil {
		return fmt.Errorf("server certificate in %s: %w", p.pkiDir, err)
	}
	id, err := pki.IdentityFromCert(serverCert.Leaf)
	if err != nil || id.Role != pki.RoleCollector {
		return fmt.Errorf("server certificate in %s does not carry a collector identity: %v", p.pkiDir, err)
	}
	signer, err := pki.ReadKey(filepath.Join(p.pkiDir, pki.SigningKeyFile))
	if err != nil {
		return err
	}
	signKey, ok := signer.(ed25519.PrivateKey)
	if !ok {
		return fmt.Errorf("%s is not an Ed25519 key", filepath.Join(p.pkiDir, pki.SigningKeyFile))
	}
	signCert, err := os.ReadFile(filepath.Join(p.pkiDir, pki.SigningCertFile))
	if err != nil {
		return err
	}
	clientCAs, err := pki.ReadCertPool(filepath.Join(p.pkiDir, pki.CACertFile))
	if err != nil {
		return err
	}
	db, err := state.Open(ctx, p.state)
	if err != nil {
		return err
	}
	defer db.Close()
	st, evidence, err := openStore(ctx, cfg.Store, p.evidence, log)
	if err != nil {
		return err
	}
	if sw, ok := st.(store.Sweeper); ok {
		// Partial writes a previous run left behind (a crash, a kill)
		// will never complete: remove them before serving. The states
		// kept are those of uploads the collector still tracks to resume.
		tracked, err := db.ListUploads(ctx)
		if err != nil {
			return err
		}
		var keep [][]byte
		for _, u := range tracked {
			if len(u.StoreState) > 0 {
				keep = append(keep, u.StoreState)
			}
		}
		n, err := sw.Sweep(ctx, keep, started)
		if err != nil {
			return fmt.Errorf("sweeping partial writes in %s: %w", evidence, err)
		}
		if n > 0 {
			log.Info("removed partial writes left by a previous run", "count", n, "evidence", evidence)
		}
	}
	srv := service.New(service.Config{
		Identity: id, CA: ca, SigningKey: signKey, SigningCertPEM: signCert,
		AgentCertValidity: certTTL, Version: version, MaxUploads: maxUploads,
	}, db, st, log)

	go srv.Run(ctx)

	opts := append(service.ServerOptions(service.StreamWindow(st)), grpc.Creds(credentials.NewTLS(pki.ServerTLSConfig(serverCert, clientCAs))))
	g := grpc.NewServer(opts...)
	srv.Register(g)
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	log.Info("collector serving", "addr", lis.Addr().String(), "identity", id.String(), "evidence", evidence, "state", p.state, "version", version)
	if readyFile != "" {
		if err := os.WriteFile(readyFile, []byte(lis.Addr().String()+"\n"), 0o644); err != nil {
			g.Stop()
			return err
		}
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	// A watchdog bounds the graceful stop: long uploads do not hold a
	// shutdown hostage; they are failed and the agents reconnect.
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		log.Warn("graceful stop timed out; closing connections")
		g.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

func pkiCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "pki", Short: "Create the CA and issue certificates"}
	var p paths
	var name string
	var dns []string
	var ips []net.IP
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA, the collector's server certificate and its manifest-signing key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p.resolve()
			if err := pki.Init(pki.InitOptions{Dir: p.pkiDir, CollectorName: name, DNSNames: dns, IPs: ips}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "PKI created in %s\n  agents and responders trust: %s\n", p.pkiDir, filepath.Join(p.pkiDir, pki.CACertFile))
			return nil
		},
	}
	p.register(initCmd, "pki")
	initCmd.Flags().StringVar(&name, "name", pki.DefaultCollectorName, "collector name (spiffe://custody/collector/<name>)")
	initCmd.Flags().StringSliceVar(&dns, "dns", []string{"localhost"}, "DNS names in the server certificate")
	initCmd.Flags().IPSliceVar(&ips, "ip", []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, "IP addresses in the server certificate")

	var rp paths
	var validity time.Duration
	issueCmd := &cobra.Command{
		Use:   "issue responder NAME",
		Short: "Issue a responder client certificate",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "responder" {
				return fmt.Errorf("can only issue responder certificates here (agents enrol with a join token), not %q", args[0])
			}
			rp.resolve()
			certPath, keyPath, err := pki.IssueResponder(rp.pkiDir, args[1], validity)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "responder certificate: %s\nresponder key:         %s\n", certPath, keyPath)
			return nil
		},
	}
	rp.register(issueCmd, "pki")
	issueCmd.Flags().DurationVar(&validity, "validity", 90*24*time.Hour, "certificate lifetime")
	cmd.AddCommand(initCmd, issueCmd)
	return cmd
}

func tokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens for agents"}
	var p paths
	var uses int
	var ttl time.Duration
	var out string
	create := &cobra.Command{
		Use:   "create",
		Short: "Mint a join token (printed once; only its hash is stored)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p.resolve()
			if err := os.MkdirAll(filepath.Dir(p.state), 0o700); err != nil {
				return err
			}
			db, err := state.Open(cmd.Context(), p.state)
			if err != nil {
				return err
			}
			defer db.Close()
			tok, exp, err := db.CreateToken(cmd.Context(), uses, ttl)
			if err != nil {
				return err
			}
			if out != "" {
				// A file, not a command line: tokens must not show up in ps.
				if err := os.WriteFile(out, []byte(tok+"\n"), 0o600); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "join token written to %s (%d uses, expires %s)\n", out, uses, exp.UTC().Format(time.RFC3339))
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			fmt.Fprintf(cmd.ErrOrStderr(), "(%d uses, expires %s)\n", uses, exp.UTC().Format(time.RFC3339))
			return nil
		},
	}
	p.register(create, "state")
	create.Flags().IntVar(&uses, "uses", 1, "number of enrolments the token allows")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	create.Flags().StringVar(&out, "out", "", "write the token to this file (mode 0600) instead of stdout")
	cmd.AddCommand(create)
	return cmd
}
