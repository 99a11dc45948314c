package artifact

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fdInfo is what /proc/PID/fdinfo/N says about one descriptor. procfs parses
// it with five regular expressions per line, which on a host with tens of
// thousands of descriptors is most of a snapshot's CPU; this is a split.
type fdInfo struct {
	Pos    int64
	Flags  uint64 // octal in the file: O_* flags of the open file description
	MntID  int64
	Inode  uint64
	HasIno bool // "ino:" exists since Linux 5.14
}

// parseFDInfo parses the "key:\tvalue" lines of an fdinfo file; pos and
// flags are required, the rest is used when present. Type-specific lines
// (eventfd-count, inotify, tfd, ...) are ignored.
func parseFDInfo(b []byte) (fdInfo, error) {
	var fi fdInfo
	var havePos, haveFlags bool
	data := b
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		val = bytes.TrimSpace(val)
		var err error
		switch string(key) {
		case "pos":
			fi.Pos, err = strconv.ParseInt(string(val), 10, 64)
			havePos = err == nil
		case "flags":
			fi.Flags, err = strconv.ParseUint(string(val), 8, 64)
			haveFlags = err == nil
		case "mnt_id":
			fi.MntID, err = strconv.ParseInt(string(val), 10, 64)
		case "ino":
			fi.Inode, err = strconv.ParseUint(string(val), 10, 64)
			fi.HasIno = err == nil
		}
		if err != nil {
			return fi, fmt.Errorf("fdinfo %s %q: %w", key, val, err)
		}
	}
	if !havePos || !haveFlags {
		return fi, fmt.Errorf("fdinfo without pos and flags: %q", data)
	}
	return fi, nil
}

// openFlags are the O_* status flags worth naming. Their values differ
// between architectures (arm64 moves O_DIRECT, O_DIRECTORY, O_NOFOLLOW and
// O_LARGEFILE), so they come from x/sys for the architecture the agent was
// built for, which is the kernel's.
var openFlags = []struct {
	bit  uint64
	name string
}{
	{unix.O_CREAT, "O_CREAT"},
	{unix.O_EXCL, "O_EXCL"},
	{unix.O_NOCTTY, "O_NOCTTY"},
	{unix.O_TRUNC, "O_TRUNC"},
	{unix.O_APPEND, "O_APPEND"},
	{unix.O_NONBLOCK, "O_NONBLOCK"},
	{unix.O_DSYNC, "O_DSYNC"},
	{unix.O_ASYNC, "O_ASYNC"},
	{unix.O_DIRECT, "O_DIRECT"},
	{largeFileFlag(), "O_LARGEFILE"},
	{unix.O_DIRECTORY, "O_DIRECTORY"},
	{unix.O_NOFOLLOW, "O_NOFOLLOW"},
	{unix.O_NOATIME, "O_NOATIME"},
	{unix.O_CLOEXEC, "O_CLOEXEC"},
	{unix.O_SYNC &^ unix.O_DSYNC, "O_SYNC"}, // __O_SYNC; O_SYNC sets O_DSYNC too
	{unix.O_PATH, "O_PATH"},
	{unix.O_TMPFILE &^ unix.O_DIRECTORY, "O_TMPFILE"}, // __O_TMPFILE
}

// largeFileFlag is the kernel's O_LARGEFILE, which x/sys reports as 0 on
// 64-bit targets (user space never needs to pass it there) although the
// kernel sets it on every 64-bit open and fdinfo shows it.
func largeFileFlag() uint64 {
	switch runtime.GOARCH {
	case "arm64", "arm":
		return 0o400000
	case "ppc64", "ppc64le":
		return 0o200000
	case "mips", "mipsle", "mips64", "mips64le":
		return 0o20000
	}
	return 0o100000
}

// describeOpenFlags returns the access mode ("r", "w", "rw") and the names
// of the other flags set.
func describeOpenFlags(flags uint64) (access string, names []string) {
	switch flags & 0o3 {
	case 0:
		access = "r"
	case 1:
		access = "w"
	case 2:
		access = "rw"
	default:
		access = "invalid"
	}
	names = []string{}
	for _, f := range openFlags {
		if flags&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return access, names
}

// fdKind classifies a descriptor by its link target where the target says:
// "socket:[123]", "pipe:[123]", "anon_inode:[eventfd]" (or
// "anon_inode:bpf-map"), "/memfd:name (deleted)". A path needs stat to tell
// a regular file from a directory or device, and gets "".
func fdKind(target string) string {
	switch {
	case strings.HasPrefix(target, "socket:["):
		return "socket"
	case strings.HasPrefix(target, "pipe:["):
		return "pipe"
	case strings.HasPrefix(target, "anon_inode:"):
		return "anon_inode"
	case strings.HasPrefix(target, "/memfd:"):
		return "memfd"
	}
	return ""
}

// bracketInode extracts N from "socket:[N]" or "pipe:[N]".
func bracketInode(target string) (uint64, bool) {
	_, rest, ok := strings.Cut(target, ":[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	return n, err == nil
}

// fdFileType names a stat mode for open_files' type column.
func fdFileType(mode os.FileMode) string {
	switch {
	case mode.IsRegular():
		return "regular"
	case mode.IsDir():
		return "dir"
	case mode&os.ModeSocket != 0:
		return "socket"
	case mode&os.ModeNamedPipe != 0:
		return "pipe"
	case mode&os.ModeDevice != 0:
		return "device"
	case mode&os.ModeSymlink != 0:
		return "symlink" // O_PATH|O_NOFOLLOW on a symlink
	}
	return "unknown"
}
