package artifact

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Shared carries what one artifact's scan learned to a later artifact of
// the same collection, so that a collection walks every descriptor once:
// open_files reads each descriptor's link anyway, and those links are all
// the sockets artifact needs to know who owns which socket. The runner of
// a collection makes one with NewShared and runs the artifacts in
// RunOrder; an Env without one (or a collection without both artifacts)
// scans as before.
type Shared struct {
	mu      sync.Mutex
	sockets *socketIndex // the owners open_files found, once its scan completed
}

// NewShared returns the sharing for a collection of the named artifacts,
// or nil when nothing would be shared.
func NewShared(names []string) *Shared {
	if slices.Contains(names, "open_files") && slices.Contains(names, "sockets") {
		return &Shared{}
	}
	return nil
}

// RunOrder returns the order in which to capture the named artifacts: as
// given, except that open_files runs before sockets, whose owner scan it
// makes unnecessary. Manifests keep the requested order.
func RunOrder(names []string) []int {
	order := make([]int, 0, len(names))
	of, sk := slices.Index(names, "open_files"), slices.Index(names, "sockets")
	for i := range names {
		switch {
		case of > sk && sk >= 0 && i == sk:
			order = append(order, of, sk)
		case of > sk && sk >= 0 && i == of:
		default:
			order = append(order, i)
		}
	}
	return order
}

// Stages groups the named artifacts (indices into names) into stages run
// one after another, the artifacts of a stage at the same time: runs of
// light artifacts (the snapshots, host, kernel symbols) share a stage, so
// one's system calls overlap another's encoding and both CPUs stay busy,
// while each bulk artifact (memory, files: Kind.Bulk) has a stage to itself,
// as each already uses the CPUs and memory it is allowed. Stages follow
// RunOrder. after maps an artifact to one of its stage it must not start
// before that one finished: sockets sharing open_files' scan.
func Stages(names []string) (stages [][]int, after map[int]int) {
	after = map[int]int{}
	var light []int
	flush := func() {
		if len(light) > 0 {
			stages = append(stages, light)
			light = nil
		}
	}
	shared := NewShared(names) != nil
	for _, i := range RunOrder(names) {
		k, err := Lookup(names[i])
		if err == nil && k.Bulk {
			flush()
			stages = append(stages, []int{i})
			continue
		}
		if shared && names[i] == "sockets" {
			if j := slices.IndexFunc(light, func(j int) bool { return names[j] == "open_files" }); j >= 0 {
				after[i] = light[j]
			}
		}
		light = append(light, i)
	}
	flush()
	return stages, after
}

// RunStages calls run(i) for every named artifact, in Stages: the
// artifacts of a stage at the same time, one that comes after another of
// its stage once that one returned. When a run returns false, nothing that
// has not started yet starts.
func RunStages(names []string, run func(i int) bool) {
	stages, after := Stages(names)
	var stop atomic.Bool
	for _, stage := range stages {
		var wg sync.WaitGroup
		done := map[int]chan struct{}{}
		for _, i := range stage {
			done[i] = make(chan struct{})
		}
		for _, i := range stage {
			wg.Go(func() {
				defer close(done[i])
				if j, ok := after[i]; ok {
					<-done[j]
				}
				if !stop.Load() && !run(i) {
					stop.Store(true)
				}
			})
		}
		wg.Wait()
		if stop.Load() {
			return
		}
	}
}

func (s *Shared) wantsSockets() bool { return s != nil }

func (s *Shared) setSockets(ix *socketIndex) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sockets = ix
}

// socketOwners returns open_files' owner index, if it finished a scan. It
// is not consumed: a sockets capture that is retried sees the same owners.
func (s *Shared) socketOwners() *socketIndex {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sockets
}

// socketIndex is the sockets artifact's first pass: who holds which socket
// and which network namespace each process is in. Sockets are global
// inodes, so one map serves every namespace.
type socketIndex struct {
	scanned                     time.Time
	processes, vanished, errors int64
	warnings                    []string
	owners                      map[uint64][]sockOwner
	procs                       map[int]*sockProc
	members                     map[uint64][]int // netns -> pids, ascending
}

func newSocketIndex(scanned time.Time) *socketIndex {
	return &socketIndex{scanned: scanned, owners: map[uint64][]sockOwner{}, procs: map[int]*sockProc{}, members: map[uint64][]int{}}
}

// add folds in one process, in ascending pid order.
func (ix *socketIndex) add(sp sockProc) {
	ix.processes++
	if sp.gone {
		ix.vanished++
		return
	}
	if sp.err != "" {
		ix.errors++
		ix.warnings = append(ix.warnings, fmt.Sprintf("pid %d: %s", sp.pid, sp.err))
	}
	if sp.netns != 0 {
		ix.members[sp.netns] = append(ix.members[sp.netns], sp.pid)
	}
	for _, s := range sp.sockets {
		ix.owners[s.inode] = append(ix.owners[s.inode], sockOwner{sp.pid, s.fd})
	}
	if len(sp.sockets) > 0 {
		ix.procs[sp.pid] = &sp
	}
}
