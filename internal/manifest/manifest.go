// Package manifest is the chain-of-custody record of a collection: who asked
// for what evidence and why, what each artifact hashed to on the agent and
// on the collector, and where it is stored — signed by the collector, so that
// a court or an auditor can check that neither the record nor the evidence
// changed after the collection was sealed.
//
// The signed bytes are the manifest.json file itself, and the signature is a
// raw Ed25519 signature over exactly those bytes, so the manifest can be
// verified without this package (openssl pkeyutl -verify -rawin).
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"
)

// SchemaVersion is the only manifest schema this package reads and writes.
const SchemaVersion = 1

// Collection and artifact states.
const (
	StateComplete = "complete"
	StatePartial  = "partial" // collections only: some artifacts failed
	StateFailed   = "failed"
)

// CompressionZstd marks an artifact stored as a sequence of independent zstd
// frames, one per chunk. An empty Compression means stored raw.
const CompressionZstd = "zstd"

var (
	// ErrMalformed means the manifest is not a valid schema 1 manifest.
	ErrMalformed = errors.New("manifest: malformed")
	// ErrBadSignature means the signature does not verify over the data
	// with the key in the embedded signer certificate.
	ErrBadSignature = errors.New("manifest: bad signature")
	// ErrUntrustedSigner means the signer certificate is not a custody
	// collector certificate issued by the trusted roots.
	ErrUntrustedSigner = errors.New("manifest: untrusted signer")
	// ErrMismatch means stored evidence differs from what the manifest
	// records for it.
	ErrMismatch = errors.New("manifest: evidence does not match manifest")
)

// Manifest is the record of one collection.
type Manifest struct {
	SchemaVersion int    `json:"schema_version"`
	CollectionID  string `json:"collection_id"`
	CaseID        string `json:"case_id"`
	Reason        string `json:"reason"`
	// RequestedBy is the responder's identity URI from their verified
	// certificate, or "local" for a one-shot collection.
	RequestedBy string     `json:"requested_by"`
	RequestedAt time.Time  `json:"requested_at"`
	StartedAt   time.Time  `json:"started_at"`
	FinishedAt  time.Time  `json:"finished_at"`
	State       string     `json:"state"` // complete | partial | failed
	Agent       Agent      `json:"agent"`
	Collector   *Collector `json:"collector,omitempty"` // nil for one-shot local collections
	Artifacts   []Artifact `json:"artifacts"`
	Signer      *Signer    `json:"signer,omitempty"`
}

// Agent identifies the host the evidence came from.
type Agent struct {
	ID              string `json:"id"`
	Identity        string `json:"identity"`
	CertFingerprint string `json:"cert_fingerprint,omitempty"` // none for a one-shot local collection
	Hostname        string `json:"hostname"`
	Kernel          string `json:"kernel"`
	OS              string `json:"os"`
	Arch            string `json:"arch"`
	InstanceID      string `json:"instance_id,omitempty"` // EC2 only
	TaskARN         string `json:"task_arn,omitempty"`    // ECS/Fargate only
	Version         string `json:"version"`
}

// Collector identifies the collector that received and stored the evidence.
type Collector struct {
	Identity string `json:"identity"`
	Version  string `json:"version"`
}

// Artifact is one captured artifact and the object it is stored as.
type Artifact struct {
	Name   string `json:"name"`
	Source string `json:"source"`
	State  string `json:"state"` // complete | failed
	// RawSize and AgentSHA256 describe the raw stream as the agent
	// captured it; CollectorSHA256 is the collector's independent hash of
	// the same stream after decompressing every chunk.
	RawSize         int64  `json:"raw_size"`
	AgentSHA256     string `json:"agent_sha256"`
	CollectorSHA256 string `json:"collector_sha256,omitempty"`
	// Key is the store key relative to the collection directory's root.
	Key      string `json:"key"`
	Location string `json:"location,omitempty"`
	// StoredSize and StoredSHA256 describe the object exactly as stored,
	// so it can be checked without decompressing it.
	StoredSize    int64    `json:"stored_size"`
	StoredSHA256  string   `json:"stored_sha256"`
	Compression   string   `json:"compression"` // "zstd" or "" (stored raw)
	Chunks        int      `json:"chunks"`
	VersionID     string   `json:"version_id,omitempty"`
	ETag          string   `json:"etag,omitempty"`
	Errors        []string `json:"errors,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
	SkippedRanges []Range  `json:"skipped_ranges,omitempty"`
	Tool          Tool     `json:"tool"`
	// Details are artifact-specific facts (memory source, freeze mode, scan
	// timing) as flat strings, so Athena and jq read them without a schema.
	Details map[string]string `json:"details,omitempty"`
}

// Range is a byte range of the raw stream's source that could not be read
// (for physical memory, a physical address range); recorded so that a gap is
// never mistaken for memory that held zeros.
type Range struct {
	Start  uint64 `json:"start"`
	End    uint64 `json:"end"`
	Reason string `json:"reason"`
}

// Tool names what produced an artifact.
type Tool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Signer identifies the collector that signed the manifest. It is part of
// the signed bytes, so it cannot be swapped without breaking the signature.
type Signer struct {
	Identity       string `json:"identity"`        // spiffe URI of the collector
	Certificate    string `json:"certificate"`     // PEM of the Ed25519 signing certificate
	KeyFingerprint string `json:"key_fingerprint"` // "sha256:<hex of the raw 32-byte public key>"
}

// Marshal encodes m as indented JSON with a trailing newline. The output is
// a function of m alone, so the bytes that are signed can be reproduced. It
// refuses a manifest that Parse would refuse, so nothing unreadable is ever
// signed.
func Marshal(m *Manifest) ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil manifest", ErrMalformed)
	}
	if err := validate(m); err != nil {
		return nil, err
	}
	out := *m
	if out.Artifacts == nil {
		// "artifacts": [] says "none"; null reads as "not recorded".
		out.Artifacts = []Artifact{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Reasons, paths and errors are read by people and jq; "\u0026" in
	// place of "&" helps neither, and no HTML ever embeds a manifest.
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&out); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return buf.Bytes(), nil
}

// Parse decodes a manifest strictly: unknown, duplicate or mis-cased keys,
// trailing data, an unknown schema version or out-of-range values are all
// ErrMalformed.
func Parse(data []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := checkKeys(dec, reflect.TypeFor[Manifest](), "$"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the manifest", ErrMalformed)
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := validate(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// checkKeys walks one JSON value against the shape of t and rejects object
// keys that are not spelled exactly as a field's JSON name, or that repeat.
// encoding/json alone accepts both — it matches names case-insensitively and
// lets a later duplicate win — which would let two readers of the same signed
// bytes (this package and jq, say) see different values.
//
// Recursion follows t, which is finite, so hostile nesting cannot exhaust
// the stack: a value nested deeper than the schema is rejected.
func checkKeys(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // scalars (and null) are for encoding/json to type-check
	}
	switch d {
	case '{':
		if t != nil && t.Kind() == reflect.Map && t.Key().Kind() == reflect.String {
			// Free-form keys (artifact details), but still no duplicates.
			seen := map[string]bool{}
			for dec.More() {
				tok, err := dec.Token()
				if err != nil {
					return err
				}
				name, _ := tok.(string)
				if seen[name] {
					return fmt.Errorf("%s: duplicate key %q", path, name)
				}
				seen[name] = true
				if err := checkKeys(dec, t.Elem(), path+"."+name); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		if t == nil || t.Kind() != reflect.Struct {
			return fmt.Errorf("%s: unexpected object", path)
		}
		fields := jsonFields(t)
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name, _ := tok.(string)
			ft, ok := fields[name]
			if !ok {
				return fmt.Errorf("%s: unknown field %q", path, name)
			}
			if seen[name] {
				return fmt.Errorf("%s: duplicate field %q", path, name)
			}
			seen[name] = true
			if err := checkKeys(dec, ft, path+"."+name); err != nil {
				return err
			}
		}
	case '[':
		if t == nil || t.Kind() != reflect.Slice {
			return fmt.Errorf("%s: unexpected array", path)
		}
		for i := 0; dec.More(); i++ {
			if err := checkKeys(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// jsonFields maps the JSON names of t's fields to their types. Types such as
// time.Time that have no exported fields map to nothing, so an object where
// a string belongs is rejected.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

// validate checks what the JSON types cannot: the schema version, the
// enumerations and the shape of digests, so that a manifest that parses can
// be acted on without re-checking.
func validate(m *Manifest) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if m.SchemaVersion != SchemaVersion {
		return bad("schema_version %d, want %d", m.SchemaVersion, SchemaVersion)
	}
	if m.CollectionID == "" {
		return bad("collection_id is empty")
	}
	if m.CaseID == "" {
		return bad("case_id is empty")
	}
	switch m.State {
	case StateComplete, StatePartial, StateFailed:
	default:
		return bad("state %q, want complete, partial or failed", m.State)
	}
	for i, a := range m.Artifacts {
		where := fmt.Sprintf("artifacts[%d] %q", i, a.Name)
		if a.Name == "" {
			return bad("artifacts[%d]: name is empty", i)
		}
		switch a.State {
		case StateComplete, StateFailed:
		default:
			return bad("%s: state %q, want complete or failed", where, a.State)
		}
		switch a.Compression {
		case "", CompressionZstd:
		default:
			return bad("%s: compression %q, want zstd or empty", where, a.Compression)
		}
		if a.RawSize < 0 || a.StoredSize < 0 || a.Chunks < 0 {
			return bad("%s: negative raw_size, stored_size or chunks", where)
		}
		for _, d := range []struct{ field, v string }{
			{"agent_sha256", a.AgentSHA256},
			{"collector_sha256", a.CollectorSHA256},
			{"stored_sha256", a.StoredSHA256},
		} {
			// Empty is allowed: a failed artifact may never have been hashed.
			if d.v != "" && !isSHA256Hex(d.v) {
				return bad("%s: %s %q is not 64 lowercase hex digits", where, d.field, d.v)
			}
		}
		for _, r := range a.SkippedRanges {
			if r.End < r.Start {
				return bad("%s: skipped range [%#x, %#x) ends before it starts", where, r.Start, r.End)
			}
		}
	}
	return nil
}

// isSHA256Hex accepts only lowercase hex, the one spelling this package
// writes, so that digests compare as strings.
func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
