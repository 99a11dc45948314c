// Package session is the agent's daemon loop: it enrols if needed, keeps
// one outbound session to the collector (the collector never dials in),
// reconnects with capped exponential backoff and full jitter, renews its
// certificate before expiry, and runs tasks the moment they are pushed.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custodyhq/custody/agent/artifact"
	"github.com/custodyhq/custody/agent/enrol"
	"github.com/custodyhq/custody/agent/preflight"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Config is everything the daemon needs.
type Config struct {
	// Collector is host:port of the collector's gRPC endpoint.
	Collector string
	// ServerName is the name the collector's certificate must carry;
	// defaults to the host part of Collector.
	ServerName string
	// StateDir holds the agent's key, certificate and CA bundle.
	StateDir string
	// CAFile is the CA bundle used to verify the collector at enrolment.
	CAFile string
	// JoinToken enrols the agent when it has no valid certificate.
	JoinToken string
	// Env is where artifacts read from.
	Env artifact.Env
	// Version is reported in the hello.
	Version string
	// MinBackoff and MaxBackoff bound the reconnect delay.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

func (c *Config) withDefaults() error {
	if c.Collector == "" {
		return errors.New("session: no collector address")
	}
	if c.StateDir == "" {
		return errors.New("session: no state directory")
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return nil
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.withDefaults(); err != nil {
		return err
	}
	log := cfg.Logger.With("component", "session")
	id, err := identity(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Info("agent identity", "agent", id.ID.Name, "not_after", id.Keys.Current().Leaf.NotAfter)

	conn, err := grpc.NewClient(cfg.Collector,
		grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(id.Roots, serverName(cfg), id.Keys))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		// gRPC's own reconnect backoff grows to 120 s; cap it with ours so a
		// collector back from a long outage is found within MaxBackoff.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{
			BaseDelay: cfg.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: cfg.MaxBackoff,
		}, MinConnectTimeout: 20 * time.Second}),
	)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer conn.Close()
	client := custodyv1.NewAgentServiceClient(conn)

	go renewLoop(ctx, id, client, log)

	a := &agent{cfg: cfg, client: client, log: log, id: id}
	attempt := 0
	for {
		established, err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		lo := cfg.MinBackoff
		if established {
			// The collector welcomed us: it is healthy, and this is a
			// network blip or its restart. Start the backoff over, and
			// make the first retry quick: an upload cut mid-transfer
			// waits for it. Full jitter still spreads a fleet over the
			// first interval, and if the collector is gone the next
			// retries back off as usual.
			attempt = 0
			lo = min(lo, quickRetry)
		}
		delay := backoff(lo, cfg.MaxBackoff, attempt)
		attempt++
		log.Warn("session ended; reconnecting", "err", err, "in", delay.Round(time.Millisecond))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil
		}
	}
}

// quickRetry bounds the first reconnect after a session that was working.
const quickRetry = 100 * time.Millisecond

// backoff is "full jitter": uniformly random in [0, min(max, min·2^n)], so
// a fleet that lost its collector at the same moment does not return at
// the same moment, and the first retry after a blip is usually quick.
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	ceil := lo << min(attempt, 30)
	if ceil > hi || ceil <= 0 {
		ceil = hi
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

func serverName(cfg Config) string {
	if cfg.ServerName != "" {
		return cfg.ServerName
	}
	host := cfg.Collector
	for i := len(host) - 1; i >= 0; i-- {
		if host[i] == ':' {
			host = host[:i]
			break
		}
	}
	if len(host) > 1 && host[0] == '[' {
		host = host[1 : len(host)-1]
	}
	return host
}

// identity loads the agent's identity, enrolling with the join token when
// there is none, retrying with backoff while the collector is unreachable.
func identity(ctx context.Context, cfg Config, log *slog.Logger) (*enrol.Identity, error) {
	id, err := enrol.Load(cfg.StateDir, time.Now())
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, enrol.ErrNotEnrolled) {
		return nil, err
	}
	if cfg.JoinToken == "" {
		return nil, fmt.Errorf("%w; give a join token (CUSTODY_JOIN_TOKEN or --join-token-file)", err)
	}
	if cfg.CAFile == "" {
		return nil, errors.New("session: enrolment needs the collector's CA bundle (--ca)")
	}
	roots, err := pki.ReadCertPool(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.Collector, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(roots, serverName(cfg), nil))))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := custodyv1.NewAgentServiceClient(conn)
	for attempt := 0; ; attempt++ {
		id, err := enrol.Enroll(ctx, client, cfg.StateDir, cfg.JoinToken, HostFacts(cfg.Env))
		if err == nil {
			log.Info("enrolled", "agent", id.ID.Name)
			return id, nil
		}
		if permanent(err) {
			return nil, err
		}
		delay := backoff(cfg.MinBackoff, cfg.MaxBackoff, attempt)
		log.Warn("enrolment failed; retrying", "err", err, "in", delay.Round(time.Millisecond))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func renewLoop(ctx context.Context, id *enrol.Identity, client custodyv1.AgentServiceClient, log *slog.Logger) {
	failures := 0
	for {
		wait := time.Until(id.RenewAt())
		if failures > 0 {
			wait = backoff(time.Second, 5*time.Minute, failures)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := id.Renew(rctx, client)
		cancel()
		if err != nil {
			failures++
			log.Warn("certificate renewal failed", "err", err, "expires", id.Keys.Current().Leaf.NotAfter)
			continue
		}
		failures = 0
		log.Info("certificate renewed", "not_after", id.Keys.Current().Leaf.NotAfter)
	}
}

// agent is one daemon's live state.
type agent struct {
	cfg    Config
	client custodyv1.AgentServiceClient
	log    *slog.Logger
	id     *enrol.Identity
}

// session runs one session until it breaks. Tasks it started are
// cancelled with it: their uploads shared its connection.
func (a *agent) session(ctx context.Context) (established bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.client.Session(ctx)
	if err != nil {
		return established, err
	}
	var sendMu sync.Mutex
	send := func(m *custodyv1.SessionRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Hello{Hello: &custodyv1.Hello{
		Host: HostFacts(a.cfg.Env), Artifacts: artifact.Names(), AgentVersion: a.cfg.Version,
		Preflight: preflight.Proto(preflight.Checks(a.cfg.Env)),
	}}}); err != nil {
		return established, err
	}
	first, err := stream.Recv()
	if err != nil {
		return established, err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return false, fmt.Errorf("session: expected a welcome, got %T", first.Msg)
	}
	a.log.Info("session established", "agent", welcome.GetAgentId())
	established = true
	interval := welcome.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = 30 * time.Second
	}

	var tasks sync.WaitGroup
	defer tasks.Wait()
	defer cancel()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Heartbeat{Heartbeat: &custodyv1.Heartbeat{SentAt: timestamppb.Now()}}}) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return established, errors.New("session: collector closed the session")
		}
		if err != nil {
			return established, err
		}
		switch m := msg.Msg.(type) {
		case *custodyv1.SessionResponse_Task:
			tasks.Add(1)
			go func() {
				defer tasks.Done()
				a.runTask(ctx, m.Task, send)
			}()
		case *custodyv1.SessionResponse_CancelTask:
			a.log.Info("task cancel requested (not yet supported)", "task", m.CancelTask.GetTaskId())
		default:
			a.log.Warn("unexpected session message", "type", fmt.Sprintf("%T", m))
		}
	}
}
