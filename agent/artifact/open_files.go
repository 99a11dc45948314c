package artifact

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/agent/procbpf"
)

func init() {
	register(Kind{
		Name:    "open_files",
		Ext:     "jsonl",
		Doc:     "one JSON line per open file descriptor (osquery process_open_files plus type, deleted, flags, position, inode, device)",
		Params:  []string{"method"},
		Collect: collectOpenFiles,
	})
}

// openFileRecord is one descriptor. type is one of regular, dir, socket,
// pipe, anon_inode, memfd, device, symlink (an O_PATH descriptor on a
// link) or unknown. deleted means the kernel marks the file unlinked: a
// binary or payload removed after it was opened, and every memfd, which
// never had a name on disk. flags are the open file description's status
// flags in octal as fdinfo prints them, with the access mode and the names
// of the rest spelled out beside them.
type openFileRecord struct {
	PID       int      `json:"pid"`
	FD        *int     `json:"fd"`
	Path      string   `json:"path"`
	Type      string   `json:"type"`
	Deleted   bool     `json:"deleted"`
	Flags     string   `json:"flags"`
	Access    string   `json:"access"`
	FlagNames []string `json:"flag_names"`
	Pos       *int64   `json:"pos"`
	Inode     *uint64  `json:"inode"`
	Device    string   `json:"device"`
	MntID     *int64   `json:"mnt_id"`
	Size      *int64   `json:"size"` // regular files
	Error     string   `json:"error,omitempty"`
}

func collectOpenFiles(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
	method, err := parseReadMethod(p)
	if err != nil {
		return Result{}, err
	}
	files := newOpenFileCache()
	share := env.Shared.wantsSockets()
	var ix *socketIndex
	var fold func(procBatch)
	if share {
		ix = newSocketIndex(time.Now())
		fold = func(b procBatch) {
			if b.sock != nil {
				ix.add(*b.sock)
			}
		}
	}
	it, ok, unavailable, err := openIterator(ctx, env, "open_files", method, procbpf.OpenFiles)
	if err != nil {
		return Result{}, err
	}
	var src *pidStream[procbpf.File]
	if ok {
		defer it.Close()
		src = &pidStream[procbpf.File]{it: it, pid: func(f procbpf.File) int { return f.PID }}
	}
	res, err := scanProcessesPrep(ctx, env, w, "open_files", "descriptors", func(pid int) []procbpf.File {
		if src == nil {
			return nil
		}
		fds, _ := src.take(pid)
		return fds
	}, func(p snapProc, s *scratch, fds []procbpf.File) procBatch {
		if fds != nil {
			return readOpenFilesBPF(p, s, files, share, fds)
		}
		return readOpenFiles(p, s, files, share)
	}, fold)
	if src != nil {
		bpfDetails(&res, true, nil, src.failed())
	} else {
		bpfDetails(&res, false, unavailable, nil)
	}
	if err == nil && share {
		env.Shared.setSockets(ix)
	}
	return res, err
}

// openFileCache remembers, for one scan, what stat said about each open
// file, keyed by the mount id and inode number fdinfo gives. A host's
// descriptors point at far fewer files than there are descriptors (every
// process holds /dev/null, its terminal, the same logs and libraries), and
// stat through /proc/PID/fd/N is a path walk and a system call each. The
// type and device of an inode never change; the size recorded is the one
// the scan saw first for that file.
type openFileCache struct {
	mu    sync.Mutex
	stats map[openFileKey]openFileStat
}

type openFileKey struct {
	mnt int64
	ino uint64
}

type openFileStat struct {
	mode     uint32
	dev, ino uint64
	size     int64
}

func newOpenFileCache() *openFileCache {
	return &openFileCache{stats: map[openFileKey]openFileStat{}}
}

func (c *openFileCache) get(k openFileKey) (openFileStat, bool) {
	if c == nil {
		return openFileStat{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.stats[k]
	return st, ok
}

func (c *openFileCache) put(k openFileKey, st openFileStat) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats[k] = st
}

// readOpenFiles reads every descriptor of p. With sockets, the batch also
// carries what the sockets artifact's owner scan would have learned: p's
// network namespace and its socket descriptors.
func readOpenFiles(p snapProc, s *scratch, files *openFileCache, sockets bool) procBatch {
	out := newProcBatch(p.pid)
	var sp *sockProc
	if sockets {
		sp = &sockProc{pid: p.pid}
	}
	// Permission denied (or worse) on the whole table: one record says
	// so, and the scan goes on.
	tableError := func(err error) procBatch {
		if p.gone(err) {
			return procBatch{pid: p.pid, gone: true, sock: goneSock(sp, p.pid)}
		}
		addRecord(out, openFileRecord{PID: p.pid, FlagNames: []string{}, Error: "fd: " + err.Error()}, "fd: "+err.Error())
		if sp != nil {
			sp.err = joinErr(sp.err, "fd: "+err.Error())
		}
		b := out.done()
		b.sock = sp
		return b
	}
	h, err := openProc(p)
	if err != nil {
		return tableError(err)
	}
	defer h.close()
	if sp != nil {
		if sp.netns, err = h.namespace(s, "net"); err != nil {
			if p.gone(err) {
				return procBatch{pid: p.pid, gone: true, sock: goneSock(sp, p.pid)}
			}
			sp.err = "net_namespace: " + err.Error()
		}
	}
	t, err := openFDTable(h)
	if err != nil {
		return tableError(err)
	}
	defer t.close()
	fds, err := s.listNumeric(t.fdDir, h.dir+"/fd")
	if err != nil {
		return tableError(err)
	}
	for _, fd := range fds {
		rec, skip := t.readOpenFile(s, fd, files)
		if skip {
			continue
		}
		sp.noteSocket(fd, rec)
		addRecord(out, rec, rec.Error)
	}
	b := out.done()
	if sp != nil {
		if len(sp.sockets) > 0 {
			sp.name, sp.container = socketOwnerNames(h, s)
		}
		b.sock = sp
	}
	return b
}

// noteSocket records descriptor fd in sp if it is a socket; sp is nil
// when sockets does not share the scan.
func (sp *sockProc) noteSocket(fd int, rec openFileRecord) {
	if sp != nil && rec.Type == "socket" && rec.Inode != nil {
		sp.sockets = append(sp.sockets, sockFD{fd, *rec.Inode})
	}
}

func goneSock(sp *sockProc, pid int) *sockProc {
	if sp == nil {
		return nil
	}
	return &sockProc{pid: pid, gone: true}
}

func joinErr(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// fdTable is a process's open fd and fdinfo directories.
type fdTable struct {
	h              procHandle
	fdDir, infoDir int
}

func openFDTable(h procHandle) (fdTable, error) {
	t := fdTable{h: h, infoDir: -1}
	var err error
	if t.fdDir, err = h.openSubdir("fd"); err != nil {
		return t, err
	}
	// fdinfo is opened lazily per descriptor below it; failing to open the
	// directory leaves each record's fdinfo error to say so.
	t.infoDir, _ = retryEINTR(func() (int, error) {
		return unix.Openat(h.fd, "fdinfo", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	return t, nil
}

func (t fdTable) close() {
	unix.Close(t.fdDir)
	if t.infoDir >= 0 {
		unix.Close(t.infoDir)
	}
}

// readOpenFile reads descriptor fd of process p, for callers outside a scan.
func readOpenFile(p snapProc, fd int) (openFileRecord, bool) {
	s := newScratch()
	h, err := openProc(p)
	if err != nil {
		return openFileRecord{}, true
	}
	defer h.close()
	t, err := openFDTable(h)
	if err != nil {
		return openFileRecord{}, true
	}
	defer t.close()
	return t.readOpenFile(s, fd, nil)
}

// readOpenFile reads one descriptor. skip reports a descriptor closed while
// it was read, which is normal churn, not an error.
func (t fdTable) readOpenFile(s *scratch, fd int, files *openFileCache) (rec openFileRecord, skip bool) {
	p := t.h.snapProc
	rec = openFileRecord{PID: p.pid, FD: &fd, FlagNames: []string{}}
	name := strconv.Itoa(fd)
	target, err := s.readlink(t.fdDir, name, p.dir+"/fd/"+name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rec, true
		}
		rec.Error = "path: " + err.Error()
		return rec, false
	}
	var errs errorList
	infoDir, infoName := t.infoDir, name
	if infoDir < 0 {
		infoDir, infoName = t.h.fd, "fdinfo/"+name
	}
	if b, _, err := s.readFile(infoDir, infoName, p.dir+"/fdinfo/"+name, maxSmallFile, false); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rec, true
		}
		errs.add("fdinfo", err)
	} else if fi, err := parseFDInfo(b); err != nil {
		errs.add("fdinfo", err)
	} else {
		rec.setFDInfo(s, fi)
	}
	return describeOpenFile(p, s, rec, target, errs, func(rec openFileRecord) (openFileStat, error) {
		return statOpenFile(t.fdDir, t.h.dir, name, rec, files)
	}), false
}

// setFDInfo fills the columns fdinfo gives; s caches the flags' text.
func (rec *openFileRecord) setFDInfo(s *scratch, fi fdInfo) {
	ft := s.flagText(fi.Flags)
	rec.Flags, rec.Access, rec.FlagNames = ft.octal, ft.access, ft.names
	rec.Pos, rec.MntID = &fi.Pos, &fi.MntID
	if fi.HasIno {
		rec.Inode = &fi.Inode
	}
}

// describeOpenFile completes a record from the descriptor's link target
// and what fdinfo said (already in rec): its type, and for files on disk
// what stat says, and whether it was deleted.
func describeOpenFile(p snapProc, s *scratch, rec openFileRecord, target string, errs errorList, stat func(openFileRecord) (openFileStat, error)) openFileRecord {
	rec.Path = target
	rec.Type = fdKind(target)
	// Sockets, pipes and anonymous inodes say what they are in their link;
	// stat would add only their pseudo-filesystem's device. Everything else
	// is stat'ed through the magic link, which reaches the open file
	// itself, deleted or not, and never opens it: a FIFO cannot block.
	var id *fileID
	switch rec.Type {
	case "socket", "pipe", "anon_inode":
	default:
		st, err := stat(rec)
		if err != nil {
			if rec.Type == "" {
				rec.Type = "unknown"
				errs.add("stat", err)
			}
			break
		}
		if rec.Type == "" {
			rec.Type = fdFileType(fdModeFromStat(st.mode))
		}
		if rec.Type == "regular" || rec.Type == "memfd" {
			size := st.size
			rec.Size = &size
		}
		rec.Device = s.devString(st.dev)
		if rec.Inode == nil {
			ino := st.ino
			rec.Inode = &ino
		}
		id = &fileID{dev: st.dev, ino: st.ino}
	}
	if rec.Inode == nil {
		if ino, ok := bracketInode(target); ok {
			rec.Inode = &ino
		}
	}
	switch rec.Type {
	case "socket", "pipe", "anon_inode":
	default:
		rec.Path, rec.Deleted = deletedTarget(p, target, id)
	}
	rec.Error = errs.String()
	return rec
}

// statOpenFile stats descriptor name through its magic link in fdDir (the
// open /proc/PID/fd of procDir), or takes what an earlier descriptor of
// the same file (same mount id and inode, from fdinfo) found.
func statOpenFile(fdDir int, procDir, name string, rec openFileRecord, files *openFileCache) (openFileStat, error) {
	known := rec.MntID != nil && rec.Inode != nil
	var key openFileKey
	if known {
		key = openFileKey{mnt: *rec.MntID, ino: *rec.Inode}
		if st, ok := files.get(key); ok {
			return st, nil
		}
	}
	var st unix.Stat_t
	if err := statAt(fdDir, name, procDir+"/fd/"+name, &st); err != nil {
		return openFileStat{}, err
	}
	out := openFileStat{mode: st.Mode, dev: st.Dev, ino: st.Ino, size: st.Size}
	// Only a stat of the very inode fdinfo named is remembered: the
	// descriptor may have been closed and reused in between.
	if known && st.Ino == key.ino {
		files.put(key, out)
	}
	return out, nil
}

// fdModeFromStat converts a raw st_mode's type bits to an fs.FileMode.
func fdModeFromStat(m uint32) fs.FileMode {
	switch m & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return fs.ModeDir
	case syscall.S_IFLNK:
		return fs.ModeSymlink
	case syscall.S_IFIFO:
		return fs.ModeNamedPipe
	case syscall.S_IFSOCK:
		return fs.ModeSocket
	case syscall.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFBLK:
		return fs.ModeDevice
	case syscall.S_IFREG:
		return 0
	}
	return fs.ModeIrregular
}
