package artifact

// The volatile-state snapshots (processes, sockets, open_files, memory_maps)
// share one way of walking /proc, kept here: list the pids once, read each
// process on a small pool of workers, and emit the records in pid order so
// that two snapshots of the same host diff cleanly. Reading in parallel
// matters on a busy host: most of a snapshot's time is spent in the kernel
// producing /proc text, and that scales with CPUs; emitting in order keeps
// the artifact deterministic and lets the writer see one record at a time.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// snapshotMaxWorkers bounds the readers. More than a few buys nothing on
// /proc (the kernel serialises much of it) and costs the host CPU it is
// busy with; the agent's GOMAXPROCS lowers it further.
const snapshotMaxWorkers = 4

func snapshotWorkers() int {
	return max(1, min(runtime.GOMAXPROCS(0), snapshotMaxWorkers))
}

// snapshotPIDs lists the numeric entries of procRoot, sorted. Threads are
// not listed (they live under /proc/PID/task), which is what every snapshot
// wants: file descriptors, maps and sockets belong to the thread group.
func snapshotPIDs(procRoot string) ([]int, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", procRoot, err)
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// snapshotOrdered calls read(s, i) for i in [0, n) on up to workers
// goroutines, each with its own scratch buffers s, and emit with each
// result in index order. At most about 2*workers results are held at once,
// so memory stays bounded however many processes a host runs. The first
// emit error, or ctx's, stops the scan and is returned.
func snapshotOrdered[T any](ctx context.Context, workers, n int, read func(s *scratch, i int) T, emit func(T) error) error {
	return snapshotOrderedPrep(ctx, workers, n, func(int) struct{} { return struct{}{} },
		func(s *scratch, i int, _ struct{}) T { return read(s, i) }, emit)
}

// snapshotOrderedPrep is snapshotOrdered with a step that must run in index
// order: prep(i) is called for i in [0, n) on one goroutine, before job i
// is handed to a worker, and its result is passed to read. A source that
// arrives as one ordered stream (a BPF iterator) is cut into per-process
// pieces there.
func snapshotOrderedPrep[P, T any](ctx context.Context, workers, n int, prep func(i int) P, read func(s *scratch, i int, p P) T, emit func(T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type slot struct {
		v    T
		done chan struct{}
	}
	type job struct {
		i int
		p P
		s *slot
	}
	jobs := make(chan job)
	order := make(chan *slot, workers*2)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newScratch()
			for j := range jobs {
				j.s.v = read(s, j.i, j.p)
				close(j.s.done)
			}
		}()
	}
	go func() {
		defer close(order)
		defer close(jobs)
		for i := range n {
			s := &slot{done: make(chan struct{})}
			// Into the order queue first: a slot handed to a worker is
			// then always one the emitter will wait for, or skip once
			// ctx is done.
			select {
			case order <- s:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- job{i, prep(i), s}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var err error
	emitted := 0
	for s := range order {
		select {
		case <-s.done:
		case <-ctx.Done():
		}
		if err != nil {
			continue // drain, so the producer can finish
		}
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
			continue
		}
		if eerr := emit(s.v); eerr != nil {
			err = eerr
			cancel()
		}
		emitted++
	}
	wg.Wait()
	if err == nil && emitted < n {
		// The producer stopped early, which only ctx ending makes it do;
		// with nothing left in the queue the loop above never saw it.
		err = ctx.Err()
	}
	return err
}

// snapshotStats is the account of one scan that goes into the manifest
// through Result.Details. Only the emitting goroutine updates it.
type snapshotStats struct {
	started   time.Time
	now       func() time.Time
	processes int64 // processes looked at
	vanished  int64 // exited during the scan: normal, not errors
	errors    int64 // records carrying an error (permission, parse)
	extra     map[string]string
}

func newSnapshotStats(env Env) *snapshotStats {
	return &snapshotStats{started: time.Now(), now: env.Now, extra: map[string]string{}}
}

// details renders the stats. Timing uses the monotonic clock, not env.Now,
// so a test's fixed clock cannot hide a slow scan; scan_started is env.Now
// so golden files stay reproducible.
func (s *snapshotStats) details() map[string]string {
	d := map[string]string{
		"scan_started":       s.now().UTC().Format(time.RFC3339Nano),
		"scan_duration_ms":   strconv.FormatInt(time.Since(s.started).Milliseconds(), 10),
		"processes_scanned":  strconv.FormatInt(s.processes, 10),
		"processes_vanished": strconv.FormatInt(s.vanished, 10),
		"errors":             strconv.FormatInt(s.errors, 10),
	}
	for k, v := range s.extra {
		d[k] = v
	}
	return d
}

// snapProc is one process's directory under a /proc root.
type snapProc struct {
	root string // the /proc root, e.g. "/proc"
	pid  int
	dir  string // root/pid
}

func newSnapProc(root string, pid int) snapProc {
	return snapProc{root: root, pid: pid, dir: filepath.Join(root, strconv.Itoa(pid))}
}

func (p snapProc) path(name ...string) string {
	return filepath.Join(append([]string{p.dir}, name...)...)
}

// gone reports whether err, from reading one of the process's files, means
// the process has exited. ESRCH always does. ENOENT only does if the
// process directory itself is gone: a missing file inside a live process
// (a kernel thread's exe, an absent net protocol) is a fact about that
// file, and dropping the process for it would lose evidence.
func (p snapProc) gone(err error) bool {
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	_, serr := os.Lstat(p.dir)
	return errors.Is(serr, fs.ErrNotExist)
}

// readCapped reads at most max bytes of a pseudo-file. truncated reports
// that there was more: /proc sizes cannot be trusted (they say 0), and a
// hostile process controls its own cmdline and environment.
func readCapped(path string, max int) (data []byte, truncated bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	data, err = io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > max {
		return data[:max], true, nil
	}
	return data, false, nil
}

// parseNSLink parses the target of a /proc/PID/ns/* link, "net:[4026531840]",
// into the namespace inode. kind must match: a link naming another kind
// would be a fake /proc.
func parseNSLink(kind, target string) (uint64, error) {
	rest, ok := strings.CutPrefix(target, kind+":[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return 0, fmt.Errorf("namespace link %q is not %s:[inode]", target, kind)
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("namespace link %q: %w", target, err)
	}
	return ino, nil
}

func (p snapProc) namespace(kind string) (uint64, error) {
	target, err := os.Readlink(p.path("ns", kind))
	if err != nil {
		return 0, err
	}
	return parseNSLink(kind, target)
}

// deletedSuffix is what the kernel appends to a link into a file that was
// unlinked: the classic sign of malware that deleted itself.
const deletedSuffix = " (deleted)"

// deletedTarget splits the kernel's " (deleted)" marker from a link target
// (exe, fd, maps path). A file may really be called "x (deleted)", so when
// the caller knows the open file's identity (id, from stat through the
// magic link) and a file of that literal name in the process's root is the
// same inode, the name is taken as it is.
func deletedTarget(p snapProc, target string, id *fileID) (path string, deleted bool) {
	stripped, ok := strings.CutSuffix(target, deletedSuffix)
	if !ok {
		return target, false
	}
	if id != nil && strings.HasPrefix(target, "/") {
		var lit unix.Stat_t
		if err := unix.Lstat(p.path("root", target), &lit); err == nil && lit.Dev == id.dev && lit.Ino == id.ino {
			return target, false
		}
	}
	return stripped, true
}

// devString formats a device number the way /proc/PID/maps does, "fe:01",
// so open_files and memory_maps agree with each other and with the kernel.
func devString(dev uint64) string {
	return fmt.Sprintf("%02x:%02x", unix.Major(dev), unix.Minor(dev))
}

// errorList collects the per-column problems of one record.
type errorList []string

func (e *errorList) add(column string, err error) {
	*e = append(*e, column+": "+err.Error())
}

func (e errorList) String() string { return strings.Join(e, "; ") }

// procBatch is one process's records, encoded by a worker so that JSON
// encoding runs in parallel too, and written in one piece.
type procBatch struct {
	pid     int
	gone    bool
	sock    *sockProc // open_files, when sockets shares its scan
	records int
	errs    []string // per-record problems, for warnings
	data    []byte
}

func (b procBatch) emit(w io.Writer, stats *snapshotStats, warn *warnings, res *Result, n *int) error {
	stats.processes++
	if b.gone {
		stats.vanished++
		return nil
	}
	// One warning per process, not per record: an unprivileged agent
	// gets "permission denied" for every descriptor of every foreign
	// process, and the records themselves already say which.
	switch n := len(b.errs); {
	case n == 1:
		warn.add("pid %d: %s", b.pid, b.errs[0])
	case n > 1:
		warn.add("pid %d: %s (and %d more records with errors)", b.pid, b.errs[0], n-1)
	}
	stats.errors += int64(len(b.errs))
	if len(b.data) == 0 {
		return nil
	}
	if _, err := w.Write(b.data); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	b.release()
	res.Records += b.records
	*n += b.records
	return nil
}

// procBatchEncoder accumulates one process's records.
type procBatchEncoder struct {
	b   procBatch
	buf bytes.Buffer
	enc *json.Encoder // for records that are not jsonAppenders, made on first use
}

// batchBufs recycles the batches' buffers once they are written: a scan
// encodes tens of megabytes a few kilobytes at a time, and growing a fresh
// buffer for each process was a tenth of the scan's CPU.
var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

func newProcBatch(pid int) *procBatchEncoder {
	e := &procBatchEncoder{b: procBatch{pid: pid}}
	e.buf = *bytes.NewBuffer((*batchBufs.Get().(*[]byte))[:0])
	return e
}

// release hands b's buffer back for reuse; b.data is invalid afterwards.
func (b *procBatch) release() {
	if cap(b.data) > 0 && cap(b.data) <= 4<<20 {
		data := b.data[:0]
		batchBufs.Put(&data)
	}
	b.data = nil
}

// addRecord adds an open_files record, and addMap a memory_maps record.
// They are concrete, not one generic or add(any): through a static call
// escape analysis sees the record is only read, so the record and the
// values its pointer fields point to stay on the stack, where tens of
// thousands of them cost no garbage.
func addRecord(e *procBatchEncoder, rec openFileRecord, errText string) {
	e.buf.Write(append(rec.appendJSON(e.buf.AvailableBuffer()), '\n'))
	e.count(errText)
}

func addMap(e *procBatchEncoder, rec memoryMapRecord, errText string) {
	e.buf.Write(append(rec.appendJSON(e.buf.AvailableBuffer()), '\n'))
	e.count(errText)
}

func (e *procBatchEncoder) add(rec any, errText string) {
	if e.enc == nil {
		e.enc = json.NewEncoder(&e.buf)
		e.enc.SetEscapeHTML(false)
	}
	if err := e.enc.Encode(rec); err != nil {
		errText = "encode: " + err.Error()
		fmt.Fprintf(&e.buf, "{\"pid\":%d,\"error\":%q}\n", e.b.pid, errText)
	}
	e.count(errText)
}

func (e *procBatchEncoder) count(errText string) {
	e.b.records++
	if errText != "" {
		e.b.errs = append(e.b.errs, errText)
	}
}

func (e *procBatchEncoder) done() procBatch {
	e.b.data = e.buf.Bytes()
	return e.b
}
