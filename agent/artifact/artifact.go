// Package artifact is the agent's catalogue of evidence it can capture.
//
// Each capture source lives in its own file and registers a Kind from an init
// function, the way database/sql drivers do, so that adding an artifact never
// touches the uploader, the session or the CLI: they discover what exists
// through Lookup and Names. The table is written only during package
// initialisation and is read-only afterwards, which is why it needs no lock.
//
// A Kind's Collect streams the raw artifact to an io.Writer as it reads it.
// Nothing here holds a whole artifact in memory: the agent is a guest on a
// production host and an artifact can be larger than the host's free memory.
// Every path a source reads from is rooted in Env, so tests (and an agent
// looking at a mounted snapshot) can point it at a fake /proc or /etc.
package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

var (
	// ErrUnknownArtifact is returned by Lookup for a name nobody registered.
	ErrUnknownArtifact = errors.New("unknown artifact")
	// ErrBadParam is returned for a parameter a Kind does not accept, or a
	// value it cannot use.
	ErrBadParam = errors.New("bad artifact parameter")
)

// Kind describes one artifact the agent can capture.
type Kind struct {
	Name    string   // "host", "processes", "file"
	Ext     string   // file extension of the raw artifact: "json", "jsonl", "bin"
	Doc     string   // one line for --help
	Params  []string // parameter names it accepts; any other is an error
	Collect func(ctx context.Context, env Env, p Params, w io.Writer) (Result, error)
	// CollectAt, for sources that can seek (a file, a memory image), writes
	// the artifact from raw offset on: how an interrupted upload resumes in
	// place. Sources without it are regenerated and their already-stored
	// prefix skipped and checked against the collector's hash.
	CollectAt func(ctx context.Context, env Env, p Params, offset int64, w io.Writer) (Result, error)
	// Bulk marks large binary sources (memory, files): they are
	// compressed for speed over the last percent of size
	// (chunk.CodecZstdBulk).
	Bulk bool
}

// Params are the per-request options of one artifact, such as the path of
// the file artifact.
type Params map[string]string

// Env says where a capture source finds the host it describes. The zero value
// means the live host.
type Env struct {
	ProcRoot string       // default "/proc"
	SysRoot  string       // default "/sys"
	HostRoot string       // prefix for /etc files such as os-release; default "/"
	Logger   *slog.Logger // never nil after Env.withDefaults()
	Now      func() time.Time
	// Shared passes what one artifact's scan learned to a later one of
	// the same collection (NewShared); nil scans each on its own.
	Shared *Shared
}

// Result tells the uploader, and through it the manifest, what a capture
// looked at and what it could not see.
type Result struct {
	Source   string   // what was read, e.g. "procfs:/proc", "file:/var/tmp/x.img"
	Records  int      // JSON records written (0 for non-record artifacts)
	Warnings []string // non-fatal per-record problems
	// Skipped are byte ranges of the source that could not be read (memory
	// regions, unreadable pages). Whatever stands in for them in the output
	// is never silently passed off as evidence: every range is recorded.
	Skipped []Range
	// Details are artifact-specific facts for the manifest (e.g. memory
	// source, freeze mode, scan timing), as flat key/value strings.
	Details map[string]string
}

// Range is a half-open range [Start, End) of a source's address space.
type Range struct {
	Start, End uint64
	Reason     string
}

// kinds is filled by init functions only; see the package comment.
var kinds = map[string]Kind{}

// register adds k to the table. It panics on a programming error, as
// sql.Register does, because a broken registration can only come from code
// in this package and must fail every test rather than a collection.
func register(k Kind) {
	switch {
	case k.Name == "":
		panic("artifact: register of a Kind without a name")
	case k.Collect == nil:
		panic("artifact: register of " + k.Name + " without Collect")
	case k.Ext == "":
		panic("artifact: register of " + k.Name + " without Ext")
	}
	if _, dup := kinds[k.Name]; dup {
		panic("artifact: register called twice for " + k.Name)
	}
	k.Params = slices.Clone(k.Params)
	collect := k.Collect
	// Checking parameters and filling defaults here, rather than in every
	// source, means a caller that invokes Collect directly cannot skip either.
	k.Collect = func(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
		if err := k.CheckParams(p); err != nil {
			return Result{}, err
		}
		return collect(ctx, env.withDefaults(), p, w)
	}
	if at := k.CollectAt; at != nil {
		k.CollectAt = func(ctx context.Context, env Env, p Params, offset int64, w io.Writer) (Result, error) {
			if err := k.CheckParams(p); err != nil {
				return Result{}, err
			}
			return at(ctx, env.withDefaults(), p, offset, w)
		}
	}
	kinds[k.Name] = k
}

// Lookup returns the Kind registered under name.
func Lookup(name string) (Kind, error) {
	k, ok := kinds[name]
	if !ok {
		return Kind{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownArtifact, name, strings.Join(Names(), ", "))
	}
	// A copy of Params keeps a caller from editing the shared table.
	k.Params = slices.Clone(k.Params)
	return k, nil
}

// Names returns the registered artifact names, sorted.
func Names() []string {
	return slices.Sorted(maps.Keys(kinds))
}

// CheckParams reports the first parameter, in sorted order, that k does not
// accept. Unknown parameters are an error rather than ignored because a
// responder's typo ("pth=") must not silently capture something else.
func (k Kind) CheckParams(p Params) error {
	for _, name := range slices.Sorted(maps.Keys(p)) {
		if !slices.Contains(k.Params, name) {
			accepts := "none"
			if len(k.Params) > 0 {
				accepts = strings.Join(k.Params, ", ")
			}
			return fmt.Errorf("%w: artifact %q does not accept %q (accepts: %s)", ErrBadParam, k.Name, name, accepts)
		}
	}
	return nil
}

func (e Env) withDefaults() Env {
	if e.ProcRoot == "" {
		e.ProcRoot = "/proc"
	}
	if e.SysRoot == "" {
		e.SysRoot = "/sys"
	}
	if e.HostRoot == "" {
		e.HostRoot = "/"
	}
	if e.Logger == nil {
		e.Logger = slog.New(slog.DiscardHandler)
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	return e
}

// maxSmallFile bounds reads of /proc and /etc files. procfs reports most
// files as size 0 (or 4096) whatever they hold, so the size cannot be trusted
// and a bound is the only protection against a file that never ends.
const maxSmallFile = 64 << 10

// readSmall reads a whole pseudo-file of at most maxSmallFile bytes.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmallFile {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxSmallFile)
	}
	return b, nil
}

// maxWarnings caps Result.Warnings. An unprivileged agent gets one warning per
// foreign process, and the agent's memory must stay bounded whatever the
// size of the host; the full list still goes to the debug log.
const maxWarnings = 100

type warnings struct {
	list       []string
	suppressed int
	log        *slog.Logger
}

func (w *warnings) add(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.log.Debug("artifact warning", "warning", msg)
	if len(w.list) >= maxWarnings {
		w.suppressed++
		return
	}
	w.list = append(w.list, msg)
}

func (w *warnings) result() []string {
	if w.suppressed > 0 {
		return append(w.list, fmt.Sprintf("%d more warnings suppressed", w.suppressed))
	}
	return w.list
}
