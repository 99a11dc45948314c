package artifact

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

func init() {
	register(Kind{
		Name: "files",
		Ext:  "tar",
		Doc:  "triage files by glob (logs, shell histories, crontabs, systemd units, authorized_keys, /etc/passwd) as a PAX tar with a SHA-256 index",
		Params: []string{
			"sensitive", "container", "globs", "max_file_size", "max_total_size",
		},
		Collect: collectFiles,
	})
}

// The files artifact is one PAX tar stream:
//
//   - a global PAX header whose CUSTODY.* records say what root the paths
//     were resolved in (the host, or a container's mount namespace);
//   - one member per captured path under "fs/" ("fs/etc/passwd"), each with
//     the PAX record CUSTODY.sha256, the SHA-256 of the member's content,
//     and the file's mode, owner and modification, access and change times
//     (PAX keeps them to the nanosecond);
//   - last, "index.jsonl": one JSON line per path the globs matched,
//     captured or not, with its metadata, SHA-256 and, for a path that was
//     only listed or was skipped, why. The index carries CUSTODY.sha256 too.
//
// An index "beside" the tar would need a second artifact stream, so it
// travels inside it; the per-member records make each entry checkable on
// its own with any PAX reader (bsdtar, Python's tarfile, Go's archive/tar).
//
// Symlinks are recorded (as symlink members and index lines), never
// followed: neither while expanding globs nor when opening a file. Every
// open is relative to a directory descriptor with O_NOFOLLOW, starting from
// the root, so a link planted in a container cannot lead the agent out of
// that container's tree into the host's.
//
// A file's content is written once its hash is known, because the PAX
// record precedes the content: files up to triageSmallFile are read once
// into memory, larger ones are read twice. If a large file changes between
// the reads, the member holds the second read, the index says so
// (changed_during_capture) and gives both hashes; CUSTODY.sha256 is then
// the first read's.

// Default globs, in the order they are captured: the small, high-value
// files first, so that a total size cap cuts logs, not authorized_keys.
var defaultTriageGlobs = []string{
	"/etc/passwd", "/etc/group", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
	"/etc/sudoers", "/etc/sudoers.d/*", "/etc/ld.so.preload",
	"/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/*",
	"/root/.ssh/authorized_keys*", "/home/*/.ssh/authorized_keys*",
	"/root/.*history", "/home/*/.*history",
	"/root/.local/share/fish/fish_history", "/home/*/.local/share/fish/fish_history",
	"/etc/crontab", "/etc/anacrontab", "/etc/cron.d/*", "/etc/cron.hourly/*", "/etc/cron.daily/*",
	"/etc/cron.weekly/*", "/etc/cron.monthly/*", "/var/spool/cron/**", "/var/spool/anacron/*",
	"/etc/rc.local", "/etc/profile", "/etc/profile.d/*", "/etc/bash.bashrc", "/etc/environment",
	"/root/.bashrc", "/root/.profile", "/root/.bash_profile",
	"/home/*/.bashrc", "/home/*/.profile", "/home/*/.bash_profile",
	"/etc/systemd/system/**", "/run/systemd/system/**", "/usr/lib/systemd/system/**",
	"/root/.config/systemd/user/**", "/home/*/.config/systemd/user/**",
	"/var/log/**",
	// Listings only: attackers stage payloads here, and their content can
	// be large; the index tells the responder what to fetch with "file".
	"list:/tmp/**", "list:/var/tmp/**", "list:/dev/shm/**",
}

// sensitiveTriageGlobs are added only with sensitive=true: password hashes
// are evidence of tampering, and also credentials the evidence store must
// then protect.
var sensitiveTriageGlobs = []string{"/etc/shadow", "/etc/gshadow", "/etc/security/opasswd"}

const (
	defaultMaxFileSize  = 32 << 20
	defaultMaxTotalSize = 512 << 20
	// triageSmallFile is the largest file read once into memory.
	triageSmallFile = 1 << 20
	// maxTriageIndex bounds the index, the one part of the artifact held
	// in memory until the end.
	maxTriageIndex = 100_000
	// maxTriageDepth bounds recursion below a glob's fixed prefix.
	maxTriageDepth = 32
	// maxDirEntries bounds the names read from one directory: a /tmp with
	// millions of files must not exhaust the agent.
	maxDirEntries = 100_000
)

type triageGlob struct {
	pattern string   // as given, for the index
	segs    []string // path segments of the absolute pattern
	list    bool     // metadata only
}

type triageOptions struct {
	globs    []triageGlob
	maxFile  int64
	maxTotal int64
	// container is the pid whose root the paths resolve in (0: host).
	container   int
	containerID string
}

func parseTriageParams(ctx context.Context, env Env, p Params) (triageOptions, error) {
	o := triageOptions{maxFile: defaultMaxFileSize, maxTotal: defaultMaxTotalSize}
	patterns := defaultTriageGlobs
	if g, ok := p["globs"]; ok {
		patterns = nil
		for _, s := range strings.Split(g, ",") {
			if s = strings.TrimSpace(s); s != "" {
				patterns = append(patterns, s)
			}
		}
		if len(patterns) == 0 {
			return o, fmt.Errorf("%w: files globs=%q names no pattern", ErrBadParam, g)
		}
	}
	if v, ok := p["sensitive"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("%w: files sensitive=%q: want true or false", ErrBadParam, v)
		}
		if b {
			patterns = append(slices.Clone(sensitiveTriageGlobs), patterns...)
		}
	}
	for _, pat := range patterns {
		g, err := parseTriageGlob(pat)
		if err != nil {
			return o, err
		}
		o.globs = append(o.globs, g)
	}
	for name, dst := range map[string]*int64{"max_file_size": &o.maxFile, "max_total_size": &o.maxTotal} {
		if v, ok := p[name]; ok {
			n, err := parseByteSize(v)
			if err != nil || n <= 0 {
				return o, fmt.Errorf("%w: files %s=%q: want a positive size such as 1048576, 64MiB or 1GiB", ErrBadParam, name, v)
			}
			*dst = n
		}
	}
	if c, ok := p["container"]; ok {
		pid, id, err := resolveContainer(ctx, env.ProcRoot, c)
		if err != nil {
			return o, err
		}
		o.container, o.containerID = pid, id
	}
	return o, nil
}

func parseTriageGlob(pat string) (triageGlob, error) {
	g := triageGlob{pattern: pat}
	if rest, ok := strings.CutPrefix(pat, "list:"); ok {
		g.list, pat = true, rest
	}
	if !strings.HasPrefix(pat, "/") {
		return g, fmt.Errorf("%w: files glob %q is not absolute", ErrBadParam, g.pattern)
	}
	for _, seg := range strings.Split(strings.Trim(pat, "/"), "/") {
		switch {
		case seg == "" || seg == ".":
			continue
		case seg == "..":
			return g, fmt.Errorf("%w: files glob %q climbs out with \"..\"", ErrBadParam, g.pattern)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return g, fmt.Errorf("%w: files glob %q: %v", ErrBadParam, g.pattern, err)
		}
		g.segs = append(g.segs, seg)
	}
	if len(g.segs) == 0 {
		return g, fmt.Errorf("%w: files glob %q matches the root itself", ErrBadParam, g.pattern)
	}
	return g, nil
}

// parseByteSize parses "1048576", "64MiB", "64M", "1GiB", "512k".
func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	lower := strings.ToLower(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}} {
		if strings.HasSuffix(lower, u.suffix) {
			mult, s = u.mult, s[:len(s)-len(u.suffix)]
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, err
	}
	if n > (1<<62)/mult {
		return 0, errors.New("too large")
	}
	return n * mult, nil
}

// resolveContainer turns the container parameter into a pid whose root the
// paths resolve in: a pid as given, or the lowest pid whose cgroup names a
// container id starting with the given one (at least 12 characters, the
// short id docker ps prints).
func resolveContainer(ctx context.Context, procRoot, c string) (int, string, error) {
	if pid, err := strconv.Atoi(c); err == nil {
		if pid <= 0 {
			return 0, "", fmt.Errorf("%w: files container=%q is not a pid", ErrBadParam, c)
		}
		if _, err := os.Stat(filepath.Join(procRoot, c)); err != nil {
			return 0, "", fmt.Errorf("files: container pid %d: %w", pid, err)
		}
		return pid, "", nil
	}
	if len(c) < 12 {
		return 0, "", fmt.Errorf("%w: files container=%q: want a pid or at least 12 characters of a container id", ErrBadParam, c)
	}
	pids, err := snapshotPIDs(procRoot)
	if err != nil {
		return 0, "", fmt.Errorf("files: %w", err)
	}
	for _, pid := range pids {
		if err := ctx.Err(); err != nil {
			return 0, "", err
		}
		b, _, err := readCapped(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"), maxSmallFile)
		if err != nil {
			continue
		}
		if id := parseCgroup(b).Container.ID; id != "" && strings.HasPrefix(id, c) {
			return pid, id, nil
		}
	}
	return 0, "", fmt.Errorf("files: no process of container %q under %s", c, procRoot)
}

// triageIndexRecord is one line of index.jsonl.
type triageIndexRecord struct {
	Path string `json:"path"` // absolute, inside the root
	// PathBase64 is the path's exact bytes, given only when they are not
	// valid UTF-8: JSON cannot carry them, and path shows U+FFFD instead.
	PathBase64 string `json:"path_base64,omitempty"`
	TarName    string `json:"tar_name,omitempty"`
	// Status is captured (content in the tar), recorded (a symlink,
	// directory or special file: its header is in the tar, it has no
	// content), listed (metadata only, by a list: glob) or skipped.
	Status       string `json:"status"`
	Reason       string `json:"reason,omitempty"`
	Type         string `json:"type"`
	Size         int64  `json:"size"`
	Mode         string `json:"mode"`
	UID          uint32 `json:"uid"`
	GID          uint32 `json:"gid"`
	Inode        uint64 `json:"inode"`
	Device       string `json:"device"`
	Mtime        string `json:"mtime"`
	Atime        string `json:"atime"`
	Ctime        string `json:"ctime"`
	LinkTarget   string `json:"link_target,omitempty"`
	SHA256       string `json:"sha256,omitempty"`
	HeaderSHA256 string `json:"header_sha256,omitempty"` // only when it differs
	Changed      bool   `json:"changed_during_capture,omitempty"`
	Pattern      string `json:"pattern"`
}

type triage struct {
	ctx   context.Context
	opts  triageOptions
	tw    *tar.Writer
	warn  *warnings
	seen  map[string]bool
	index bytes.Buffer
	enc   *json.Encoder
	buf   []byte

	entries, captured, listed, skipped, errors int
	bytes                                      int64
	capped                                     bool
}

func collectFiles(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
	res := Result{}
	opts, err := parseTriageParams(ctx, env, p)
	if err != nil {
		return res, err
	}
	rootPath := env.HostRoot
	res.Source = "fs:" + rootPath
	if opts.container != 0 {
		rootPath = filepath.Join(env.ProcRoot, strconv.Itoa(opts.container), "root")
		res.Source = "fs:" + rootPath
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	// The root itself is opened following links: /proc/PID/root is one,
	// and it is how a container's mount namespace is entered.
	rootFD, err := unix.Open(rootPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("files: open root %s: %w", rootPath, err)
	}
	root := os.NewFile(uintptr(rootFD), rootPath)
	defer root.Close()

	started := time.Now()
	warn := warnings{log: env.Logger}
	t := &triage{ctx: ctx, opts: opts, tw: tar.NewWriter(w), warn: &warn, seen: map[string]bool{}, buf: make([]byte, triageSmallFile)}
	t.enc = json.NewEncoder(&t.index)
	t.enc.SetEscapeHTML(false)

	global := map[string]string{"CUSTODY.root": rootPath, "CUSTODY.collected_at": env.Now().UTC().Format(time.RFC3339Nano)}
	if opts.container != 0 {
		global["CUSTODY.container_pid"] = strconv.Itoa(opts.container)
		if opts.containerID != "" {
			global["CUSTODY.container_id"] = opts.containerID
		}
	}
	if err := t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: global, Format: tar.FormatPAX}); err != nil {
		return res, fmt.Errorf("files: write: %w", err)
	}

	var werr error
	for _, g := range opts.globs {
		if werr = t.walk(root, "", g.segs, g, 0); werr != nil {
			break
		}
	}
	if werr == nil {
		werr = ctx.Err()
	}
	// The index is written even after a failure, so that whatever reached
	// the tar is accounted for, unless the writer itself failed.
	var wErr triageWriteError
	if werr == nil || !errors.As(werr, &wErr) {
		if err := t.writeIndex(env); err != nil && werr == nil {
			werr = err
		}
	}
	res.Records = t.entries
	res.Warnings = warn.result()
	res.Details = map[string]string{
		"root":                rootPath,
		"scan_started":        env.Now().UTC().Format(time.RFC3339Nano),
		"scan_duration_ms":    strconv.FormatInt(time.Since(started).Milliseconds(), 10),
		"files_captured":      strconv.Itoa(t.captured),
		"files_listed":        strconv.Itoa(t.listed),
		"files_skipped":       strconv.Itoa(t.skipped),
		"bytes_captured":      strconv.FormatInt(t.bytes, 10),
		"errors":              strconv.Itoa(t.errors),
		"max_file_size":       strconv.FormatInt(opts.maxFile, 10),
		"max_total_size":      strconv.FormatInt(opts.maxTotal, 10),
		"index":               "index.jsonl (last tar member); per-member PAX record CUSTODY.sha256",
		"index_entries":       strconv.Itoa(t.entries),
		"index_limit_reached": strconv.FormatBool(t.capped),
	}
	if opts.container != 0 {
		res.Details["container_pid"] = strconv.Itoa(opts.container)
		res.Details["container_id"] = opts.containerID
	}
	if werr != nil {
		return res, fmt.Errorf("files: %w", werr)
	}
	return res, nil
}

// triageWriteError marks a failure of the artifact's writer, which ends the
// artifact; every other error is about one path and is recorded.
type triageWriteError struct{ err error }

func (e triageWriteError) Error() string { return "write: " + e.err.Error() }
func (e triageWriteError) Unwrap() error { return e.err }

func (t *triage) writeIndex(env Env) error {
	data := t.index.Bytes()
	sum := sha256.Sum256(data)
	now := env.Now()
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: "index.jsonl", Mode: 0o644, Size: int64(len(data)),
		ModTime: now, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"CUSTODY.sha256": hex.EncodeToString(sum[:])},
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return triageWriteError{err}
	}
	if _, err := t.tw.Write(data); err != nil {
		return triageWriteError{err}
	}
	if err := t.tw.Close(); err != nil {
		return triageWriteError{err}
	}
	return nil
}

// walk matches segs against the tree below dir (at rel inside the root).
func (t *triage) walk(dir *os.File, rel string, segs []string, g triageGlob, depth int) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	if t.capped {
		return nil
	}
	if depth > maxTriageDepth {
		t.warn.add("files: %s: deeper than %d directories below %q, not descended", "/"+rel, maxTriageDepth, g.pattern)
		return nil
	}
	seg, rest := segs[0], segs[1:]
	switch {
	case seg == "**":
		names, err := t.readDir(dir, rel)
		if err != nil {
			return nil
		}
		if len(rest) > 0 {
			if err := t.walk(dir, rel, rest, g, depth); err != nil {
				return err
			}
		}
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				continue // gone since the listing
			}
			child := path.Join(rel, name)
			isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
			if len(rest) == 0 && (!isDir || g.list) {
				if err := t.visit(dir, name, child, &st, g); err != nil {
					return err
				}
			}
			if isDir {
				if err := t.descend(dir, name, child, segs, g, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	case strings.ContainsAny(seg, "*?[\\"):
		names, err := t.readDir(dir, rel)
		if err != nil {
			return nil
		}
		for _, name := range names {
			if ok, _ := path.Match(seg, name); ok {
				if err := t.step(dir, name, path.Join(rel, name), rest, g, depth); err != nil {
					return err
				}
			}
		}
		return nil
	default:
		return t.step(dir, seg, path.Join(rel, seg), rest, g, depth)
	}
}

// step handles one matched name: the end of the pattern, or a directory
// to continue in. A symlink where the pattern continues is recorded and
// not followed.
func (t *triage) step(dir *os.File, name, rel string, rest []string, g triageGlob, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			t.recordError(rel, g, "stat", err)
		}
		return nil
	}
	if len(rest) == 0 {
		return t.visit(dir, name, rel, &st, g)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return t.descend(dir, name, rel, rest, g, depth+1)
	case unix.S_IFLNK:
		return t.visit(dir, name, rel, &st, g)
	}
	return nil
}

func (t *triage) descend(dir *os.File, name, rel string, segs []string, g triageGlob, depth int) error {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
			t.recordError(rel, g, "open directory", err)
		}
		return nil
	}
	sub := os.NewFile(uintptr(fd), "/"+rel)
	defer sub.Close()
	return t.walk(sub, rel, segs, g, depth)
}

// readDir returns a directory's names, sorted, at most maxDirEntries.
func (t *triage) readDir(dir *os.File, rel string) ([]string, error) {
	// Rewind: "**" reads a directory once for itself and again for the
	// pattern's rest, through the same descriptor.
	if _, err := dir.Seek(0, io.SeekStart); err != nil {
		t.warn.add("files: list /%s: %v", rel, err)
		t.errors++
		return nil, err
	}
	var names []string
	for len(names) < maxDirEntries {
		batch, err := dir.Readdirnames(4096)
		names = append(names, batch...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.warn.add("files: list /%s: %v", rel, err)
			t.errors++
			if len(names) == 0 {
				return nil, err
			}
			break
		}
	}
	if len(names) >= maxDirEntries {
		t.warn.add("files: /%s: more than %d entries, the rest not examined", rel, maxDirEntries)
		names = names[:maxDirEntries]
	}
	slices.Sort(names)
	return names, nil
}

func (t *triage) recordError(rel string, g triageGlob, op string, err error) {
	t.errors++
	t.warn.add("files: %s /%s: %v", op, rel, err)
}

// visit records one path the pattern matched, once, however many
// patterns match it.
func (t *triage) visit(dir *os.File, name, rel string, st *unix.Stat_t, g triageGlob) error {
	if t.seen[rel] {
		return nil
	}
	if t.entries >= maxTriageIndex {
		if !t.capped {
			t.capped = true
			t.warn.add("files: more than %d paths matched; the rest are neither captured nor indexed", maxTriageIndex)
		}
		return nil
	}
	t.seen[rel] = true
	rec := statIndexRecord(rel, st, g)
	switch {
	case g.list:
		rec.Status = "listed"
		t.listed++
		if rec.Type == "symlink" {
			rec.LinkTarget, _ = triageReadlink(dir, name)
		}
	default:
		if err := t.capture(dir, name, st, &rec); err != nil {
			return err
		}
	}
	t.entries++
	if err := t.enc.Encode(rec); err != nil {
		return err
	}
	return nil
}

func statIndexRecord(rel string, st *unix.Stat_t, g triageGlob) triageIndexRecord {
	ts := func(t unix.Timespec) string { return time.Unix(t.Sec, t.Nsec).UTC().Format(time.RFC3339Nano) }
	var raw string
	if !utf8.ValidString(rel) {
		raw = base64.StdEncoding.EncodeToString([]byte("/" + rel))
	}
	return triageIndexRecord{
		Path: "/" + rel, PathBase64: raw, Type: triageStatType(st.Mode), Size: st.Size,
		Mode: fmt.Sprintf("%04o", st.Mode&0o7777), UID: st.Uid, GID: st.Gid,
		Inode: st.Ino, Device: devString(st.Dev),
		Mtime: ts(st.Mtim), Atime: ts(st.Atim), Ctime: ts(st.Ctim),
		Pattern: g.pattern,
	}
}

func triageStatType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char_device"
	case unix.S_IFBLK:
		return "block_device"
	}
	return "unknown"
}

func triageReadlink(dir *os.File, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(int(dir.Fd()), name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// capture writes one matched path into the tar and completes its record.
func (t *triage) capture(dir *os.File, name string, st *unix.Stat_t, rec *triageIndexRecord) error {
	hdr := &tar.Header{
		Name: "fs/" + strings.TrimPrefix(rec.Path, "/"), Mode: int64(st.Mode & 0o7777),
		Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime:    time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		AccessTime: time.Unix(st.Atim.Sec, st.Atim.Nsec),
		ChangeTime: time.Unix(st.Ctim.Sec, st.Ctim.Nsec),
		Format:     tar.FormatPAX,
	}
	skip := func(reason string) error {
		rec.Status, rec.Reason = "skipped", reason
		t.skipped++
		return nil
	}
	header := func() error {
		if err := t.tw.WriteHeader(hdr); err != nil {
			return triageWriteError{err}
		}
		rec.TarName = hdr.Name
		rec.Status = "recorded"
		return nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		target, err := triageReadlink(dir, name)
		if err != nil {
			t.errors++
			return skip("readlink: " + err.Error())
		}
		rec.LinkTarget = target
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		return header()
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		return header()
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
		return header()
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		return header()
	default:
		// Sockets have no tar type; the index line is the record.
		return skip("a " + rec.Type + " has no content to capture")
	}

	if st.Size > t.opts.maxFile {
		return skip(fmt.Sprintf("larger than max_file_size (%d bytes)", t.opts.maxFile))
	}
	if t.bytes+st.Size > t.opts.maxTotal {
		return skip(fmt.Sprintf("max_total_size (%d bytes) reached", t.opts.maxTotal))
	}
	f, err := triageOpenAt(dir, name)
	if err != nil {
		t.errors++
		return skip("open: " + err.Error())
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		t.errors++
		return skip("fstat: " + err.Error())
	}
	if fst.Dev != st.Dev || fst.Ino != st.Ino || fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return skip("replaced between listing and opening")
	}
	if fst.Size > t.opts.maxFile {
		return skip(fmt.Sprintf("grew past max_file_size (%d bytes) before it was read", t.opts.maxFile))
	}
	if t.bytes+fst.Size > t.opts.maxTotal {
		return skip(fmt.Sprintf("max_total_size (%d bytes) reached", t.opts.maxTotal))
	}
	size := fst.Size
	hdr.Typeflag = tar.TypeReg

	if size <= int64(len(t.buf)) {
		n, err := io.ReadFull(f, t.buf[:size])
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			t.errors++
			return skip("read: " + err.Error())
		}
		data := t.buf[:n]
		sum := sha256.Sum256(data)
		rec.SHA256 = hex.EncodeToString(sum[:])
		rec.Changed = int64(n) != fst.Size
		hdr.Size = int64(n)
		hdr.PAXRecords = map[string]string{"CUSTODY.sha256": rec.SHA256}
		if err := header(); err != nil {
			return err
		}
		if _, err := t.tw.Write(data); err != nil {
			return triageWriteError{err}
		}
		rec.Status, rec.Size = "captured", int64(n)
		t.captured++
		t.bytes += int64(n)
		return nil
	}

	// Large file: hash, then stream while hashing again. Appends after the
	// first read do not change the first size bytes, so a log being
	// written to still hashes the same twice.
	first := sha256.New()
	n1, err := io.CopyBuffer(first, io.NewSectionReader(f, 0, size), t.buf)
	if err != nil {
		t.errors++
		return skip("read: " + err.Error())
	}
	size = n1
	rec.SHA256 = hex.EncodeToString(first.Sum(nil))
	hdr.Size = size
	hdr.PAXRecords = map[string]string{"CUSTODY.sha256": rec.SHA256}
	if err := header(); err != nil {
		return err
	}
	second := sha256.New()
	n2, rerr := triageCopyHashed(t.tw, second, io.NewSectionReader(f, 0, size), t.buf)
	var we triageWriteError
	if errors.As(rerr, &we) {
		return rerr
	}
	if n2 < size {
		// Shrunk between the reads: the member must still be size bytes.
		if err := triagePadZeros(t.tw, size-n2, t.buf); err != nil {
			return triageWriteError{err}
		}
		rec.Reason = fmt.Sprintf("file shrank during capture: the last %d bytes of the member are zero padding", size-n2)
	}
	if got := hex.EncodeToString(second.Sum(nil)); got != rec.SHA256 || n2 < size {
		rec.HeaderSHA256, rec.SHA256, rec.Changed = rec.SHA256, got, true
		t.warn.add("files: %s changed while it was captured", rec.Path)
	}
	rec.Status, rec.Size = "captured", size
	t.captured++
	t.bytes += size
	return nil
}

// triageCopyHashed copies r to w, hashing what it writes. A read error ends the
// copy short (the caller pads); a write error comes back as triageWriteError.
func triageCopyHashed(w io.Writer, h hash.Hash, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			h.Write(buf[:m])
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, triageWriteError{werr}
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func triagePadZeros(w io.Writer, n int64, buf []byte) error {
	clear(buf)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// triageOpenAt opens name in dir for reading without following a symlink,
// without blocking on a FIFO swapped in since the stat, and without
// touching the access time where the kernel allows.
func triageOpenAt(dir *os.File, name string) (*os.File, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	fd, err := unix.Openat(int(dir.Fd()), name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(int(dir.Fd()), name, flags, 0)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}
