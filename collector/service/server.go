// Package service implements the collector's two gRPC services: the
// agent-facing one (enrolment, renewal, the session that pushes tasks, and
// the verified upload) and the responder-facing API. It holds only domain
// dependencies — state, an evidence store, the CA and the signing key — and
// turns domain errors into status codes in one place.
package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Config is what the services need beyond their dependencies.
type Config struct {
	// Identity is the collector's own identity, recorded in manifests.
	Identity pki.Identity
	// CA issues agent certificates at enrolment and renewal.
	CA *pki.CA
	// SigningKey and SigningCertPEM seal manifests.
	SigningKey     ed25519.PrivateKey
	SigningCertPEM []byte
	// AgentCertValidity is the lifetime of agent certificates.
	AgentCertValidity time.Duration
	// HeartbeatInterval is what agents are told to use.
	HeartbeatInterval time.Duration
	// TaskTTL bounds how long a collection waits for an offline agent.
	TaskTTL time.Duration
	// Version is the collector's version, recorded in manifests.
	Version string
	// MaxUploads bounds uploads in progress (and so the collector's memory:
	// their chunks share chunkMemory, their store buffers the store's
	// budget); more wait for a slot.
	MaxUploads int
}

func (c *Config) withDefaults() {
	if c.AgentCertValidity == 0 {
		c.AgentCertValidity = 24 * time.Hour
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.TaskTTL == 0 {
		c.TaskTTL = 24 * time.Hour
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.MaxUploads <= 0 {
		c.MaxUploads = 16
	}
}

// Server implements AgentService and ResponderService.
type Server struct {
	custodyv1.UnimplementedAgentServiceServer
	custodyv1.UnimplementedResponderServiceServer

	cfg   Config
	db    *state.DB
	store store.Store
	log   *slog.Logger
	hub   *hub
	now   func() time.Time

	sealMu  sync.Mutex
	uploads chan struct{}

	artMu    sync.Mutex
	artLocks map[string]*artLock
}

// New returns a Server.
func New(cfg Config, db *state.DB, st store.Store, log *slog.Logger) *Server {
	cfg.withDefaults()
	return &Server{cfg: cfg, db: db, store: st, log: log.With("component", "service"), hub: newHub(), now: time.Now,
		uploads: make(chan struct{}, cfg.MaxUploads), artLocks: map[string]*artLock{}}
}

// Register adds both services to g.
func (s *Server) Register(g *grpc.Server) {
	custodyv1.RegisterAgentServiceServer(g, s)
	custodyv1.RegisterResponderServiceServer(g, s)
}

// MaxMessageSize admits one full chunk and its envelope, nothing larger.
const MaxMessageSize = chunk.MaxFrameSize + 64<<10

// ServerOptions are the gRPC options the services rely on: authorization
// from the verified certificate, the message size bound, the codec that
// recycles chunk buffers, each upload's flow-control window (StreamWindow
// of the store), and keepalives that survive an NLB's 350 s idle timeout.
func ServerOptions(window int32) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unaryAuth),
		grpc.ChainStreamInterceptor(streamAuth),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.ForceServerCodecV2(codec{}),
		// Fixed flow-control windows instead of gRPC's BDP estimate, which
		// grows each stream's to 16 MiB: what an agent may send ahead of
		// the collector's reading is then bounded per upload, not by the
		// link. A chunk larger than the window still arrives whole: gRPC
		// opens the window for a message being read.
		grpc.InitialWindowSize(window),
		grpc.InitialConnWindowSize(4 << 20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 60 * time.Second, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
}

// StreamWindow is the flow-control window of each upload's stream: what an
// agent may send ahead of the collector's reading, held in the collector's
// memory for each of up to MaxUploads uploads.
//
// On the fs store it is 2 MiB: two compressed chunks of a memory image,
// so the agent goes on sending while the collector checks one. Measured
// side by side on a 2 GiB memory image (BenchmarkAB, three runs): 1.5-6%
// faster than 1 MiB; 16 agents × 128 MiB into fs ran at the same speed.
// More did not help: 4 MiB, with an 8 MiB connection window and six
// chunks unacknowledged instead of three, ran at the same median (530
// MiB/s, four rounds).
// The S3 store also holds a part buffer of each upload, and there 2 MiB
// pushed the collector into its memory limit: 16 agents × 128 MiB into S3
// fell from 150 to 99 MiB/s at twice the CPU per GiB. It keeps 1 MiB.
func StreamWindow(st store.Store) int32 {
	if _, ok := st.(*store.FS); ok {
		return 2 << 20
	}
	return 1 << 20
}

// newID returns prefix + UTC time + random hex: sortable, unguessable,
// and a valid store key segment.
func newID(prefix string, now time.Time) string {
	var b [5]byte
	rand.Read(b[:])
	return prefix + now.UTC().Format("20060102t150405") + "-" + hex.EncodeToString(b[:])
}

// background is a context for bookkeeping that must happen even when the
// request that triggered it has been cancelled (recording a failure).
func background() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// Run does the collector's background duties until ctx ends: failing tasks
// whose deadline passed (their agent never came back to finish them).
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		s.sweepDeadlines(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Server) sweepDeadlines(ctx context.Context) {
	cols, err := s.db.Unfinished(ctx)
	if err != nil {
		s.log.Warn("deadline sweep", "err", err)
		return
	}
	now := s.now()
	for _, col := range cols {
		if !col.Deadline.IsZero() && now.After(col.Deadline) {
			s.log.Warn("collection deadline passed", "collection", col.ID, "agent", col.AgentID, "state", col.State)
			s.failUnfinished(ctx, col.ID, "deadline passed before the agent finished the capture")
		}
	}
}
