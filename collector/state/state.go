// Package state is the collector's durable memory: join tokens, enrolled
// agents, and collections with their per-artifact results. It lives in an
// embedded SQLite database (pure Go, no cgo) so that a collector restarted
// mid-incident, even by kill -9, knows what it was doing.
package state

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

var (
	ErrNotFound = errors.New("state: not found")
	// ErrToken covers every refused join token; the wrapped message says why.
	ErrToken = errors.New("state: join token refused")
)

// Collection states. A collection is final once complete, partial, failed
// or cancelled; nothing moves it out of a final state.
const (
	Pending   = "pending"
	Running   = "running"
	Complete  = "complete"
	Partial   = "partial"
	Failed    = "failed"
	Cancelled = "cancelled"
)

// Final reports whether a collection or artifact state can no longer change.
func Final(s string) bool {
	switch s {
	case Complete, Partial, Failed, Cancelled:
		return true
	}
	return false
}

// DB is the collector's state database.
type DB struct {
	db  *sql.DB
	now func() time.Time
	// wmu serialises this process's writes. SQLite has one writer at a
	// time anyway; queueing here instead of in SQLite's busy handler means
	// a burst (500 agents saying hello at once) waits its turn instead of
	// failing with SQLITE_BUSY when the busy timeout runs out.
	wmu sync.Mutex
}

// migrations are applied in order; PRAGMA user_version records how many ran.
// Never edit one that has shipped: append a new one.
var migrations = []string{
	`CREATE TABLE tokens (
		hash       TEXT PRIMARY KEY,
		uses_left  INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE agents (
		id          TEXT PRIMARY KEY,
		doc         TEXT NOT NULL,
		enrolled_at INTEGER NOT NULL
	);
	CREATE TABLE collections (
		id           TEXT PRIMARY KEY,
		agent_id     TEXT NOT NULL,
		state        TEXT NOT NULL,
		requested_at INTEGER NOT NULL,
		doc          TEXT NOT NULL
	);
	CREATE INDEX collections_agent_state ON collections(agent_id, state);`,
	// Upload sessions: one per artifact being received, with the checkpoint
	// an interrupted upload resumes from.
	`CREATE TABLE uploads (
		collection_id TEXT NOT NULL,
		artifact      TEXT NOT NULL,
		id            TEXT NOT NULL,
		doc           TEXT NOT NULL,
		updated_at    INTEGER NOT NULL,
		PRIMARY KEY (collection_id, artifact)
	);`,
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*DB, error) {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	d := &DB{db: db, now: time.Now}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("state: %s: %w", path, err)
	}
	return d, nil
}

func (d *DB) migrate(ctx context.Context) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this collector (%d)", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations))); err != nil {
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// CreateToken mints a join token good for uses enrolments until ttl passes.
// Only its SHA-256 is stored: a copy of the database enrols nobody.
func (d *DB) CreateToken(ctx context.Context, uses int, ttl time.Duration) (token string, expires time.Time, err error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if uses < 1 || ttl <= 0 {
		return "", time.Time{}, fmt.Errorf("state: token needs uses >= 1 and a positive ttl (got %d, %s)", uses, ttl)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, err
	}
	token = "cjt_" + base64.RawURLEncoding.EncodeToString(b[:])
	now := d.now()
	expires = now.Add(ttl)
	_, err = d.db.ExecContext(ctx, `INSERT INTO tokens(hash, uses_left, expires_at, created_at) VALUES(?,?,?,?)`,
		tokenHash(token), uses, expires.UnixNano(), now.UnixNano())
	if err != nil {
		return "", time.Time{}, fmt.Errorf("state: create token: %w", err)
	}
	return token, expires, nil
}

func tokenHash(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// RedeemToken spends one use of token, atomically.
func (d *DB) RedeemToken(ctx context.Context, token string) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var uses int
	var expires int64
	err = tx.QueryRowContext(ctx, `SELECT uses_left, expires_at FROM tokens WHERE hash = ?`, tokenHash(token)).Scan(&uses, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%w: unknown token", ErrToken)
	case err != nil:
		return err
	case uses < 1:
		return fmt.Errorf("%w: token has no uses left", ErrToken)
	case d.now().UnixNano() >= expires:
		return fmt.Errorf("%w: token expired at %s", ErrToken, time.Unix(0, expires).UTC().Format(time.RFC3339))
	}
	if _, err := tx.ExecContext(ctx, `UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?`, tokenHash(token)); err != nil {
		return err
	}
	return tx.Commit()
}

// HostFacts describe an agent's machine as it reported them.
type HostFacts struct {
	Hostname   string `json:"hostname,omitempty"`
	OS         string `json:"os,omitempty"`
	Kernel     string `json:"kernel,omitempty"`
	Arch       string `json:"arch,omitempty"`
	BootID     string `json:"boot_id,omitempty"`
	InstanceID string `json:"instance_id,omitempty"`
	TaskARN    string `json:"task_arn,omitempty"`
}

// Agent is an enrolled agent.
type Agent struct {
	ID              string    `json:"id"`
	Host            HostFacts `json:"host"`
	Artifacts       []string  `json:"artifacts,omitempty"`
	Version         string    `json:"version,omitempty"`
	CertFingerprint string    `json:"cert_fingerprint,omitempty"`
	CertNotAfter    time.Time `json:"cert_not_after"`
	EnrolledAt      time.Time `json:"enrolled_at"`
	LastSeen        time.Time `json:"last_seen"`
	// Preflight is what the agent's host allowed at its last hello.
	Preflight []PreflightCheck `json:"preflight,omitempty"`
	// RevokedAt is set when a responder revoked the agent: its
	// certificates are refused from then on.
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	RevokedBy    string    `json:"revoked_by,omitempty"`
	RevokeReason string    `json:"revoke_reason,omitempty"`
}

// Revoked reports whether the agent's identity was revoked.
func (a Agent) Revoked() bool { return !a.RevokedAt.IsZero() }

// PreflightCheck is one thing an agent's host allows or refuses.
type PreflightCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// CreateAgent records a newly enrolled agent.
func (d *DB) CreateAgent(ctx context.Context, a Agent) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	doc, err := json.Marshal(a)
	if err != nil {
		return err
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO agents(id, doc, enrolled_at) VALUES(?,?,?)`, a.ID, doc, a.EnrolledAt.UnixNano())
	if err != nil {
		return fmt.Errorf("state: create agent %s: %w", a.ID, err)
	}
	return nil
}

// UpdateAgent applies fn to the stored agent in one transaction.
func (d *DB) UpdateAgent(ctx context.Context, id string, fn func(*Agent)) (Agent, error) {
	var a Agent
	err := d.update(ctx, `SELECT doc FROM agents WHERE id = ?`, id, &a, func() (string, []any) {
		fn(&a)
		return `UPDATE agents SET doc = ? WHERE id = ?`, nil
	})
	if err != nil {
		return Agent{}, fmt.Errorf("state: agent %s: %w", id, err)
	}
	return a, nil
}

// GetAgent returns one agent.
func (d *DB) GetAgent(ctx context.Context, id string) (Agent, error) {
	var a Agent
	if err := d.get(ctx, `SELECT doc FROM agents WHERE id = ?`, id, &a); err != nil {
		return Agent{}, fmt.Errorf("state: agent %s: %w", id, err)
	}
	return a, nil
}

// ListAgents returns every agent in enrolment order.
func (d *DB) ListAgents(ctx context.Context) ([]Agent, error) {
	return list[Agent](ctx, d.db, `SELECT doc FROM agents ORDER BY enrolled_at, id`)
}

// ToolInfo names the program that produced an artifact.
type ToolInfo struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
}

// Range is a skipped or unreadable range of a source.
type Range struct {
	Start  uint64 `json:"start"`
	End    uint64 `json:"end"`
	Reason string `json:"reason"`
}

// Artifact is one requested artifact of a collection and, once uploaded,
// its verified result.
type Artifact struct {
	Name            string            `json:"name"`
	Params          map[string]string `json:"params,omitempty"`
	State           string            `json:"state"` // pending, running, complete, failed
	BytesDone       int64             `json:"bytes_done"`
	BytesTotal      int64             `json:"bytes_total"`
	Error           string            `json:"error,omitempty"`
	Source          string            `json:"source,omitempty"`
	Key             string            `json:"key,omitempty"`
	Location        string            `json:"location,omitempty"`
	RawSize         int64             `json:"raw_size"`
	AgentSHA256     string            `json:"agent_sha256,omitempty"`
	CollectorSHA256 string            `json:"collector_sha256,omitempty"`
	StoredSize      int64             `json:"stored_size"`
	StoredSHA256    string            `json:"stored_sha256,omitempty"`
	Compression     string            `json:"compression,omitempty"`
	Chunks          int               `json:"chunks"`
	VersionID       string            `json:"version_id,omitempty"`
	ETag            string            `json:"etag,omitempty"`
	Warnings        []string          `json:"warnings,omitempty"`
	Skipped         []Range           `json:"skipped,omitempty"`
	Tool            ToolInfo          `json:"tool"`
	Details         map[string]string `json:"details,omitempty"`
}

// Collection is one responder request for evidence from one agent. Its
// task id is its collection id.
type Collection struct {
	ID          string     `json:"id"`
	AgentID     string     `json:"agent_id"`
	CaseID      string     `json:"case_id"`
	Reason      string     `json:"reason"`
	RequestedBy string     `json:"requested_by"`
	State       string     `json:"state"`
	Error       string     `json:"error,omitempty"`
	RequestedAt time.Time  `json:"requested_at"`
	StartedAt   time.Time  `json:"started_at"`
	FinishedAt  time.Time  `json:"finished_at"`
	Deadline    time.Time  `json:"deadline"`
	ManifestKey string     `json:"manifest_key,omitempty"`
	Artifacts   []Artifact `json:"artifacts"`
}

// Artifact returns the named artifact of c, or nil.
func (c *Collection) Artifact(name string) *Artifact {
	for i := range c.Artifacts {
		if c.Artifacts[i].Name == name {
			return &c.Artifacts[i]
		}
	}
	return nil
}

// CreateCollection stores a new collection.
func (d *DB) CreateCollection(ctx context.Context, c Collection) error {
	return d.CreateCollections(ctx, []Collection{c})
}

// CreateCollections stores several new collections in one transaction.
func (d *DB) CreateCollections(ctx context.Context, cols []Collection) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, c := range cols {
		doc, err := json.Marshal(c)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO collections(id, agent_id, state, requested_at, doc) VALUES(?,?,?,?,?)`,
			c.ID, c.AgentID, c.State, c.RequestedAt.UnixNano(), doc); err != nil {
			return fmt.Errorf("state: create collection %s: %w", c.ID, err)
		}
	}
	return tx.Commit()
}

// GetCollection returns one collection.
func (d *DB) GetCollection(ctx context.Context, id string) (Collection, error) {
	var c Collection
	if err := d.get(ctx, `SELECT doc FROM collections WHERE id = ?`, id, &c); err != nil {
		return Collection{}, fmt.Errorf("state: collection %s: %w", id, err)
	}
	return c, nil
}

// UnfinishedCollections returns an agent's pending and running collections,
// oldest first.
func (d *DB) UnfinishedCollections(ctx context.Context, agentID string) ([]Collection, error) {
	return list[Collection](ctx, d.db, `SELECT doc FROM collections WHERE agent_id = ? AND state IN ('pending','running') ORDER BY requested_at, id`, agentID)
}

// UpdateCollection applies fn to the stored collection in one transaction
// and returns the result. fn returning an error leaves it unchanged.
func (d *DB) UpdateCollection(ctx context.Context, id string, fn func(*Collection) error) (Collection, error) {
	var c Collection
	var fnErr error
	err := d.update(ctx, `SELECT doc FROM collections WHERE id = ?`, id, &c, func() (string, []any) {
		if fnErr = fn(&c); fnErr != nil {
			return "", nil
		}
		return `UPDATE collections SET doc = ?, state = ? WHERE id = ?`, []any{c.State}
	})
	if fnErr != nil {
		return Collection{}, fnErr
	}
	if err != nil {
		return Collection{}, fmt.Errorf("state: collection %s: %w", id, err)
	}
	return c, nil
}

// update reads one JSON document, lets mutate change it and writes it back
// with the statement mutate returns (doc first, extra args, then id last).
// An empty statement means "do not write".
func (d *DB) update(ctx context.Context, query, id string, v any, mutate func() (string, []any)) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var doc []byte
	if err := tx.QueryRowContext(ctx, query, id).Scan(&doc); errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	} else if err != nil {
		return err
	}
	if err := json.Unmarshal(doc, v); err != nil {
		return fmt.Errorf("corrupt record: %w", err)
	}
	stmt, extra := mutate()
	if stmt == "" {
		return nil
	}
	doc, err = json.Marshal(v)
	if err != nil {
		return err
	}
	args := append(append([]any{doc}, extra...), id)
	if _, err := tx.ExecContext(ctx, stmt, args...); err != nil {
		return err
	}
	return tx.Commit()
}

func (d *DB) get(ctx context.Context, query, id string, v any) error {
	var doc []byte
	err := d.db.QueryRowContext(ctx, query, id).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(doc, v); err != nil {
		return fmt.Errorf("corrupt record: %w", err)
	}
	return nil
}

func list[T any](ctx context.Context, db *sql.DB, query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		var v T
		if err := json.Unmarshal(doc, &v); err != nil {
			return nil, fmt.Errorf("state: corrupt record: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// UploadSession is the durable record of one artifact's upload: which
// object it writes and the last checkpoint it can resume from.
type UploadSession struct {
	ID           string `json:"id"`
	CollectionID string `json:"collection_id"`
	Artifact     string `json:"artifact"`
	Key          string `json:"key"`
	Compressed   bool   `json:"compressed"`
	// Checkpoint, empty until the first one.
	StoreState []byte `json:"store_state,omitempty"`
	Stored     int64  `json:"stored"`
	StoredHash []byte `json:"stored_hash,omitempty"`
	Seq        uint64 `json:"seq"`
	Offset     int64  `json:"offset"`
	RawHash    []byte `json:"raw_hash,omitempty"`
	// Resumes counts how often the upload was continued after an interruption.
	Resumes int `json:"resumes"`
}

// PutUpload creates or replaces an upload session.
func (d *DB) PutUpload(ctx context.Context, u UploadSession) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	doc, err := json.Marshal(u)
	if err != nil {
		return err
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO uploads(collection_id, artifact, id, doc, updated_at) VALUES(?,?,?,?,?)
		ON CONFLICT(collection_id, artifact) DO UPDATE SET id = excluded.id, doc = excluded.doc, updated_at = excluded.updated_at`,
		u.CollectionID, u.Artifact, u.ID, doc, d.now().UnixNano())
	if err != nil {
		return fmt.Errorf("state: upload %s: %w", u.ID, err)
	}
	return nil
}

// GetUpload returns the upload session of one artifact, or ErrNotFound.
func (d *DB) GetUpload(ctx context.Context, collectionID, artifact string) (UploadSession, error) {
	var doc []byte
	err := d.db.QueryRowContext(ctx, `SELECT doc FROM uploads WHERE collection_id = ? AND artifact = ?`, collectionID, artifact).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return UploadSession{}, fmt.Errorf("state: upload %s/%s: %w", collectionID, artifact, ErrNotFound)
	}
	if err != nil {
		return UploadSession{}, err
	}
	var u UploadSession
	if err := json.Unmarshal(doc, &u); err != nil {
		return UploadSession{}, fmt.Errorf("state: upload %s/%s: corrupt record: %w", collectionID, artifact, err)
	}
	return u, nil
}

// DeleteUpload forgets an upload session (finished or abandoned).
func (d *DB) DeleteUpload(ctx context.Context, collectionID, artifact string) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := d.db.ExecContext(ctx, `DELETE FROM uploads WHERE collection_id = ? AND artifact = ?`, collectionID, artifact)
	return err
}

// ListUploads returns every tracked upload session (for the startup sweep
// of partial objects nobody will resume).
func (d *DB) ListUploads(ctx context.Context) ([]UploadSession, error) {
	return list[UploadSession](ctx, d.db, `SELECT doc FROM uploads ORDER BY updated_at`)
}

// Unfinished returns every pending or running collection of every agent.
func (d *DB) Unfinished(ctx context.Context) ([]Collection, error) {
	return list[Collection](ctx, d.db, `SELECT doc FROM collections WHERE state IN ('pending','running') ORDER BY requested_at, id`)
}
