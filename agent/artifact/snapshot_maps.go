package artifact

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// memoryMapLine is one line of /proc/PID/maps.
type memoryMapLine struct {
	Start, End uint64
	Perms      string // "r-xp"
	Offset     uint64
	Device     string // "fe:01", as the kernel prints it
	Inode      uint64
	Path       string // "" anonymous, "[heap]" and friends, or a file
}

var errMapsLine = errors.New("malformed maps line")

// parseMemoryMapLine parses
//
//	7f3c2a000000-7f3c2a021000 r-xp 00000000 fe:01 1234     /usr/lib/x y.so (deleted)
//
// procfs splits the whole line on spaces and re-joins the path with single
// spaces, which changes a path that holds two spaces in a row; here the
// path is everything after the padding that follows the inode, byte for
// byte (the kernel escapes only "\n", as "\012").
func parseMemoryMapLine(line string) (memoryMapLine, error) {
	var m memoryMapLine
	rest := line
	var f [5]string
	for i := range f {
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			if i < 4 {
				return m, fmt.Errorf("%w: %q", errMapsLine, line)
			}
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
		if i < 4 {
			rest = rest[1:]
		}
	}
	start, end, ok := strings.Cut(f[0], "-")
	if !ok {
		return m, fmt.Errorf("%w: range %q", errMapsLine, f[0])
	}
	var err error
	if m.Start, err = strconv.ParseUint(start, 16, 64); err != nil {
		return m, fmt.Errorf("%w: start %q", errMapsLine, start)
	}
	if m.End, err = strconv.ParseUint(end, 16, 64); err != nil || m.End < m.Start {
		return m, fmt.Errorf("%w: end %q", errMapsLine, end)
	}
	if len(f[1]) != 4 {
		return m, fmt.Errorf("%w: permissions %q", errMapsLine, f[1])
	}
	m.Perms = f[1]
	if m.Offset, err = strconv.ParseUint(f[2], 16, 64); err != nil {
		return m, fmt.Errorf("%w: offset %q", errMapsLine, f[2])
	}
	if maj, min, ok := strings.Cut(f[3], ":"); !ok || !isHexDigits(maj) || !isHexDigits(min) {
		return m, fmt.Errorf("%w: device %q", errMapsLine, f[3])
	}
	m.Device = f[3]
	if m.Inode, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return m, fmt.Errorf("%w: inode %q", errMapsLine, f[4])
	}
	m.Path = strings.TrimLeft(rest, " ")
	return m, nil
}
